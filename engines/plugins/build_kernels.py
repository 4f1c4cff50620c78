"""Compile the token-pool CUDA kernels with nvcc alone (no TensorRT, no GPU needed).

This is the CPU-side check that ``csrc/pool_kernels.cu`` builds for the target
architectures; the full plugin library is built by ``build.sh`` (CMake) on a GPU server.

    python -m engines.plugins.build_kernels OUT_DIR [--arch sm_80 --arch sm_90] [--fmt cubin|ptx]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
KERNEL_SOURCE = CSRC / "pool_kernels.cu"
# Kernel names as they appear (mangled) in the cubin / PTX.
KERNEL_NAMES = ("poolSelectHeadProbsKernel", "poolSelectTopKKernel", "poolCopyRowsKernel")
FORMATS = {"cubin": "--cubin", "ptx": "--ptx"}


class NvccNotFoundError(RuntimeError):
    """nvcc is neither on PATH nor under $CUDA_HOME / $CUDA_PATH."""


class KernelCompileError(RuntimeError):
    """nvcc rejected the source; the message carries its command line and output."""


def find_nvcc() -> str | None:
    """Path of nvcc: PATH first, then $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin."""
    found = shutil.which("nvcc")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, roots):
        candidate = Path(root) / "bin" / "nvcc"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_cuda_include(nvcc: str | None = None) -> Path | None:
    """The CUDA toolkit's include directory (holding cuda_runtime_api.h), for host-only compiles.

    Tries $CUDA_HOME, $CUDA_PATH, the directory above nvcc and /usr/local/cuda, then asks
    ``nvcc --dryrun`` (which also sees through wrapper scripts).
    """
    nvcc = nvcc or find_nvcc()
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
             str(Path(nvcc).resolve().parent.parent) if nvcc else None, "/usr/local/cuda"]
    for root in filter(None, roots):
        for include in (Path(root) / "include", Path(root) / "targets" / "x86_64-linux" / "include"):
            if (include / "cuda_runtime_api.h").is_file():
                return include
    if nvcc is None:
        return None
    proc = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull], capture_output=True, text=True)
    for token in (proc.stdout + proc.stderr).split():
        token = token.strip('"')
        if token.startswith("-I") and (Path(token[2:]) / "cuda_runtime_api.h").is_file():
            return Path(token[2:]).resolve()
    return None


def nvcc_command(nvcc: str, arch: str, fmt: str, out: Path, source: Path = KERNEL_SOURCE) -> list[str]:
    """The nvcc command line that compiles ``source`` to one ``fmt`` file for ``arch``.

    Warnings are errors (``-Werror all-warnings``) so that a clean build here means clean on
    the GPU server too.
    """
    return [nvcc, "-std=c++17", "-O3", f"-arch={arch}", FORMATS[fmt], "-Werror", "all-warnings",
            "-o", str(out), str(source)]


def compile_kernels(out_dir, archs=("sm_80", "sm_90"), fmt: str = "cubin", source: Path = KERNEL_SOURCE) -> list[Path]:
    """Compile ``pool_kernels.cu`` once per arch; returns the output paths (``pool_kernels.<arch>.<fmt>``).

    Raises NvccNotFoundError when nvcc is missing, ValueError for an unknown ``fmt``,
    KernelCompileError (with nvcc's output) when compilation fails.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccNotFoundError(
            "nvcc not found (looked on PATH and in $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin); "
            "install the CUDA toolkit or put nvcc on PATH")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for arch in archs:
        out = out_dir / f"pool_kernels.{arch}.{fmt}"
        cmd = nvcc_command(nvcc, arch, fmt, out, Path(source))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise KernelCompileError(
                f"nvcc failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        outputs.append(out)
    return outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", action="append", dest="archs", help="e.g. sm_80 (repeatable; default sm_80, sm_90)")
    parser.add_argument("--fmt", choices=sorted(FORMATS), default="cubin")
    args = parser.parse_args(argv)
    for path in compile_kernels(args.out_dir, tuple(args.archs or ("sm_80", "sm_90")), args.fmt):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
