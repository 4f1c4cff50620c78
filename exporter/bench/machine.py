"""Machine facts recorded beside every bench: CPU, cores, load, stolen time, and the peak-RSS memory probe."""

from __future__ import annotations

import ctypes
import gc
import os
import platform

MEMORY_METHOD = ("peak RSS growth (VmHWM from /proc/self/status, reset via /proc/self/clear_refs after "
                 "malloc_trim) during the first prefill call of each config; for ONNX Runtime it includes the "
                 "session arena growing to its working size and the returned KV cache; weights are excluded "
                 "(loaded before)")


class _Memory:
    """Peak-RSS growth of this process around a call (Linux /proc); None where unavailable."""

    def __init__(self):
        self.base = None
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self._trim = None
        self.available = os.path.exists("/proc/self/status") and os.access("/proc/self/clear_refs", os.W_OK)

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def rss(self) -> int | None:
        return self._status("VmRSS")

    def start(self) -> None:
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        if not self.available:
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            self.available = False
            return
        self.base = self.rss()

    def peak_growth(self) -> int | None:
        if not self.available or self.base is None:
            return None
        hwm = self._status("VmHWM")
        return None if hwm is None else max(0, hwm - self.base)


def _mib(nbytes) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) * 1024
    except (OSError, StopIteration):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    simd = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma") if f" {name}" in flags]
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": cores, "memory_gib": _mib(mem) / 1024
            if mem else None, "simd": simd, "platform": platform.platform(), "python": platform.python_version()}


def package_versions() -> dict:
    from engines.artifact import installed_versions

    return installed_versions(("reroute", "torch", "transformers", "onnx", "onnxruntime", "numpy", "matplotlib"))


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _steal_ticks() -> int | None:
    """Clock ticks the hypervisor gave this VM's CPUs to someone else (/proc/stat 'steal'); None if unknown.

    Process CPU time cannot see it: a stolen core looks busy to the guest, so time stretches while the
    CPU share stays near 1."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
