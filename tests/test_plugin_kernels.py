"""CPU-side build checks for the TensorRT token-pool plugins (engines/plugins).

No GPU is needed: the CUDA kernels are compiled to cubin (sm_80, sm_90) and PTX with nvcc,
and the C++ plugin source is syntax-checked with g++ when TensorRT's headers are installed.
Running the kernels and the plugins needs a GPU and TensorRT (see docs/PLUGINS.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from engines.plugins import (DYNAMIC_PLUGIN_NAMES, PLUGIN_NAMES, PLUGIN_NAMESPACE, PLUGIN_VERSION,
                             default_library_path)
from engines.plugins.build_kernels import (
    CSRC,
    KERNEL_NAMES,
    NvccNotFoundError,
    compile_kernels,
    find_cuda_include,
    find_nvcc,
)

NVCC = find_nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")


@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    return compile_kernels(tmp_path_factory.mktemp("cubin"), archs=("sm_80", "sm_90"), fmt="cubin")


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    return compile_kernels(tmp_path_factory.mktemp("ptx"), archs=("sm_80",), fmt="ptx")


@needs_nvcc
def test_kernels_compile_to_cubin(cubins):
    assert [p.name for p in cubins] == ["pool_kernels.sm_80.cubin", "pool_kernels.sm_90.cubin"]
    for path in cubins:
        data = path.read_bytes()
        assert data[:4] == b"\x7fELF", f"{path} is not an ELF cubin"
        for name in KERNEL_NAMES:
            assert name.encode() in data, f"{name} missing from {path.name}"


@needs_nvcc
def test_kernels_compile_to_ptx(ptx):
    (path,) = ptx
    text = path.read_text()
    assert ".target sm_80" in text
    entries = [line for line in text.splitlines() if line.startswith(".visible .entry") or ".entry " in line]
    for name in KERNEL_NAMES:
        assert any(name in line for line in entries), f"no .entry for {name} in {path.name}"
    # fp32 and fp16 PoolSelect variants; gather and scatter for every copy width (16..1 bytes)
    assert sum("poolSelectHeadProbsKernel" in line for line in entries) == 2
    assert sum("poolCopyRowsKernel" in line for line in entries) == 10


def _host_compile_tools():
    """(g++, CUDA include dir) for host-only syntax checks, or skip."""
    gxx = shutil.which("g++")
    cuda_include = find_cuda_include(NVCC) if NVCC else None
    if gxx is None or cuda_include is None:
        pytest.skip("g++ or the CUDA toolkit headers (cuda_runtime_api.h) not found")
    return gxx, cuda_include


@needs_nvcc
def test_kernel_header_is_plain_cpp():
    """pool_kernels.h must compile as host C++ (it is included by the g++-built plugin source)."""
    gxx, cuda_include = _host_compile_tools()
    cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-x", "c++",
           "-isystem", str(cuda_include), "-I", str(CSRC), "-"]
    proc = subprocess.run(cmd, input='#include "pool_kernels.h"\n', capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_nvcc_is_a_clear_error(monkeypatch, tmp_path):
    import engines.plugins.build_kernels as bk

    monkeypatch.setattr(bk, "find_nvcc", lambda: None)
    with pytest.raises(NvccNotFoundError, match="nvcc not found"):
        bk.compile_kernels(tmp_path)
    with pytest.raises(ValueError, match="fmt"):
        bk.compile_kernels(tmp_path, fmt="fatbin")


def _tensorrt_include() -> Path | None:
    roots = [os.environ.get("TENSORRT_ROOT")]
    candidates = [Path(r) / "include" for r in roots if r] + [Path("/usr/include"),
                                                             Path("/usr/include/x86_64-linux-gnu")]
    return next((d for d in candidates if (d / "NvInferRuntime.h").is_file()), None)


def test_plugin_source_parses_against_tensorrt_headers():
    include = _tensorrt_include()
    if include is None:
        pytest.skip("TensorRT headers not installed")
    gxx, cuda_include = _host_compile_tools()
    for static_registration in ("0", "1"):
        cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
               f"-DREROUTE_STATIC_REGISTRATION={static_registration}", "-isystem", str(include),
               "-isystem", str(cuda_include), "-I", str(CSRC)]
        for source in ("pool_plugins.cpp", "pool_plugins_dynamic.cpp"):
            proc = subprocess.run([*cmd, str(CSRC / source)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{source}: {proc.stderr}"


def test_plugin_identity_matches_the_sources():
    """The Python names are the ones the C++ creators report (and the plugin graph pass uses)."""
    header = (CSRC / "pool_plugins.h").read_text()
    assert f'kPluginNamespace = "{PLUGIN_NAMESPACE}"' in header
    assert f'kPluginVersion = "{PLUGIN_VERSION}"' in header
    for name in PLUGIN_NAMES:
        assert f'= "{name}";' in header
    dynamic = (CSRC / "pool_plugins_dynamic.h").read_text()
    for name in DYNAMIC_PLUGIN_NAMES:
        assert f'= "{name}";' in dynamic
    registered = (CSRC / "pool_plugins.cpp").read_text()  # creatorList registers every creator
    for name in PLUGIN_NAMES + DYNAMIC_PLUGIN_NAMES:
        short = name.removeprefix("Pool")  # PoolSelectDynamic -> &selectDynamicCreator
        assert f"&{short[0].lower()}{short[1:]}Creator" in registered, name
    assert default_library_path().name == "libreroute_plugins.so"
    assert default_library_path(dynamic=True).name == "libreroute_plugins_dynamic.so"
    assert default_library_path().parent == CSRC.parent / "build"
