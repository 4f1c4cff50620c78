"""Run the token-pool CUDA kernels without TensorRT: nvcc builds a small shared library
(``csrc/pool_harness.cu`` + ``csrc/pool_kernels.cu``) whose extern "C" functions call the same
host launchers as the TensorRT plugins; ctypes calls them with numpy arrays.

Needs nvcc to build and a CUDA GPU to run; nothing else (no CuPy, torch or TensorRT).
Building works on a machine without a GPU (the CPU-side check).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from .build_kernels import CSRC, KERNEL_SOURCE, NvccNotFoundError, find_nvcc

HARNESS_SOURCE = CSRC / "pool_harness.cu"
HARNESS_SYMBOLS = ("rr_device_count", "rr_error_string", "rr_pool_select", "rr_pool_gather", "rr_pool_scatter")

_i32, _i64, _ptr = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p


class HarnessError(RuntimeError):
    """The harness could not be built, or a CUDA call failed (message has the CUDA error)."""


def harness_command(nvcc: str, arch: str, out: Path) -> list[str]:
    """nvcc line for the harness library. -cudart static: the .so loads without libcudart on the path.
    No -Werror here (tests/test_plugin_kernels.py lints the kernels): a newer toolkit's new warning on
    the GPU machine must not stop the kernels from running."""
    return [nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC", "-cudart", "static",
            "-o", str(out), str(HARNESS_SOURCE), str(KERNEL_SOURCE)]


def build_harness(out_dir, arch: str = "sm_90") -> Path:
    """Compile ``libpool_harness.<arch>.so`` into ``out_dir``; returns its path."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise NvccNotFoundError("nvcc not found; install the CUDA toolkit or put nvcc on PATH")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"libpool_harness.{arch}.so"
    cmd = harness_command(nvcc, arch, out)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        raise HarnessError(f"nvcc failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return out


def _arr(a: np.ndarray):
    return a.ctypes.data_as(_ptr)


class KernelHarness:
    """ctypes front end of the harness library; every call returns numpy arrays."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        self.lib.rr_device_count.restype = _i32
        self.lib.rr_error_string.restype = ctypes.c_char_p
        self.lib.rr_error_string.argtypes = [_i32]
        self.lib.rr_pool_select.argtypes = [_i32, _ptr, _ptr, _ptr, _ptr, _i32, _ptr] + [_i32] * 7 + [ctypes.c_float]
        self.lib.rr_pool_gather.argtypes = [_ptr, _ptr, _ptr, _i64, _ptr] + [_i64] * 5 + [_i32]
        self.lib.rr_pool_scatter.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _ptr] + [_i64] * 5 + [_i32, _i32]

    def device_count(self) -> int:
        """Visible GPUs; raises HarnessError when the CUDA runtime cannot start (no driver)."""
        count = self.lib.rr_device_count()
        if count < 0:
            raise HarnessError(f"CUDA runtime unavailable: {self._message(-count)}")
        return count

    def _message(self, code: int) -> str:
        return f"{self.lib.rr_error_string(code).decode()} (cudaError {code})"

    def _check(self, code: int, what: str) -> None:
        if code != 0:
            raise HarnessError(f"{what}: {self._message(code)}")

    def select(self, q: np.ndarray, keys: np.ndarray, v0, k: int, num_candidates: int, scale: float,
               pad_lengths=None):
        """PoolSelect: q [B, H, hd], keys [B, KVH, n, hd] (both fp32 or both fp16) -> [B, k] int64.
        v0: an int (one start for the batch) or [B] starts; pad_lengths: None or [B] left-padding counts."""
        if q.dtype != keys.dtype or q.dtype not in (np.float32, np.float16):
            raise ValueError(f"q/keys must both be float32 or float16, got {q.dtype}/{keys.dtype}")
        q, keys = np.ascontiguousarray(q), np.ascontiguousarray(keys)
        b, h, hd = q.shape
        kvh, n = keys.shape[1], keys.shape[2]
        out = np.empty((b, k), dtype=np.int64)
        starts = _starts(v0)
        pad = None if pad_lengths is None else np.ascontiguousarray(np.broadcast_to(
            np.asarray(pad_lengths, dtype=np.int64).reshape(-1), starts.shape))
        code = self.lib.rr_pool_select(int(q.dtype == np.float16), _arr(q), _arr(keys), _arr(starts),
                                       None if pad is None else _arr(pad), starts.size, _arr(out), b, h, kvh,
                                       n, hd, num_candidates, k, scale)
        self._check(code, "rr_pool_select")
        return out

    def gather(self, x: np.ndarray, selected: np.ndarray, v0, num_candidates: int, misalign: int = 0):
        """PoolGather: x [B, n, C] (any dtype; rows copied as bytes) -> [B, n - P + k, C]."""
        x, selected = np.ascontiguousarray(x), np.ascontiguousarray(selected, dtype=np.int64)
        b, n = x.shape[:2]
        k = selected.shape[1]
        out = np.empty((b, n - num_candidates + k) + x.shape[2:], dtype=x.dtype)
        starts = _starts(v0)
        code = self.lib.rr_pool_gather(_arr(x), _arr(selected), _arr(starts), starts.size, _arr(out), b, n,
                                       _row_bytes(x),
                                       num_candidates, k, misalign)
        self._check(code, "rr_pool_gather")
        return out

    def scatter(self, x, compact, selected, v0, num_candidates: int, misalign: int = 0, in_place=False):
        """PoolScatter: x [B, n, C], compact [B, n - P + k, C] -> [B, n, C]."""
        x, compact = np.ascontiguousarray(x), np.ascontiguousarray(compact, dtype=x.dtype)
        selected = np.ascontiguousarray(selected, dtype=np.int64)
        b, n = x.shape[:2]
        out = np.empty_like(x)
        starts = _starts(v0)
        code = self.lib.rr_pool_scatter(_arr(x), _arr(compact), _arr(selected), _arr(starts), starts.size, _arr(out),
                                        b, n, _row_bytes(x), num_candidates, selected.shape[1], misalign,
                                        int(in_place))
        self._check(code, "rr_pool_scatter")
        return out


def _starts(v0) -> np.ndarray:
    """An int (one start for the batch) or [B] per-sample starts, as a contiguous int64 array."""
    return np.ascontiguousarray(np.asarray(v0, dtype=np.int64).reshape(-1))


def _row_bytes(x: np.ndarray) -> int:
    return int(np.prod(x.shape[2:], dtype=np.int64)) * x.itemsize
