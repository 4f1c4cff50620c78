"""Memory preflight: estimate an export's peak before loading anything; refuse, in one line, what cannot fit.

Streamed export (exporter/weight_binder.py) holds one weight at a time, so its
peak is a fixed base (Python, torch, transformers, onnx, the traced graphs)
plus a few copies of the largest tensor (read, converted, folded):

    export peak ~= BASE + 3 x largest tensor (export dtype) + graph proto per layer

Parity runs the torch reference, frees it, then ONNX Runtime with prefill and
decode open one at a time (engines/session_backend.py, low_memory). ONNX
Runtime's CPU provider widens fp16 weights to fp32 inside its sessions, so:
parity peak ~= BASE + PARITY_FACTOR[dtype] x weight bytes. Calibrated on this
machine with scripts/measure_export.py (see the README table).
"""

from __future__ import annotations

import os
import re
import sys

import torch

from engines.errors import RerouteError

GIB = 1 << 30
BASE = int(1.0 * GIB)
PER_LAYER = 8 << 20  # traced graphs + protos grow with depth (measured: a few MB per decoder layer)
# fp16: the 4-layer 7B-width depth-cut (2.6 GiB of weights) peaked at 7.6 GiB in `reroute parity`
# (10 samples x 32 steps): (7.6 - 1) / 2.6 = 2.5; fp32 keeps the earlier calibration.
PARITY_FACTOR = {"fp16": 2.6, "fp32": 2.3}
BUDGET_ENV = "REROUTE_MEMORY_BUDGET"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not match:
        raise RerouteError(f"{BUDGET_ENV}={text!r}: expected a size such as 6GiB or 512MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _cgroup_room() -> int | None:
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def available_memory() -> int:
    """MemAvailable, the cgroup's room if lower, and REROUTE_MEMORY_BUDGET if set and lower."""
    room = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except OSError:
        pass
    candidates = [r for r in (room, _cgroup_room()) if r is not None]
    if os.environ.get(BUDGET_ENV):
        candidates.append(parse_size(os.environ[BUDGET_ENV]))
    return min(candidates) if candidates else 1 << 62


def weight_sizes(spec: str, config, dtype: str, loaded=None) -> tuple[int, int]:
    """(total weight bytes, largest tensor bytes) in the export dtype, from shapes only."""
    from .checkpoint_io import CheckpointReader
    from .models import weights_dir
    from .skeleton import meta_model

    size = torch.empty((), dtype=torch.float16 if dtype == "fp16" else torch.float32).element_size()
    if loaded is not None:
        counts = [p.numel() for p in loaded.hf_model.parameters()]
    elif (directory := weights_dir(spec)) is not None:
        counts = [int(torch.tensor(e["shape"]).prod()) for _, _, e in CheckpointReader(directory).entries.values()]
    else:
        counts = [p.numel() for p in meta_model(config).parameters()]
    return sum(counts) * size, max(counts) * size


def estimate_export_peak(spec: str, config, dtype: str, loaded=None) -> int:
    _, largest = weight_sizes(spec, config, dtype, loaded)
    return BASE + 3 * largest + PER_LAYER * config.text_config.num_hidden_layers


def preflight(spec: str, config, dtype: str, loaded=None) -> None:
    estimate, room = estimate_export_peak(spec, config, dtype, loaded), available_memory()
    if estimate > room:
        raise RerouteError(
            f"exporting {spec} ({dtype}) needs about {estimate / GIB:.1f} GiB of memory, {room / GIB:.1f} GiB is "
            f"available; free memory (close other jobs) or export on a machine with more RAM")


def parity_need(weight_bytes: int, dtype: str) -> int:
    """Estimated peak of torch then ONNX Runtime (CPU) parity on ``weight_bytes`` of ``dtype`` weights."""
    return BASE + int(PARITY_FACTOR["fp16" if dtype in ("fp16", "float16") else "fp32"] * weight_bytes)


GPU_PARITY_HINT = "run `reroute parity ARTIFACT --backends torch,tensorrt --device cuda` on a GPU server"


def parity_fits(spec: str, config, dtype: str, loaded=None) -> bool:
    """Whether the closing parity fits; if not, say so in one line (the export itself goes on)."""
    total, _ = weight_sizes(spec, config, dtype, loaded)
    need, room = parity_need(total, dtype), available_memory()
    if need <= room:
        return True
    sys.stderr.write(
        f"reroute: note: skipping the closing parity: torch and ONNX Runtime on {spec} need about {need / GIB:.1f} GiB, "
        f"{room / GIB:.1f} GiB is available; {GPU_PARITY_HINT}\n")
    return False


def parity_preflight(artifact_root, weight_bytes: int, dtype: str, backends) -> None:
    """``reroute parity`` with ONNX Runtime (CPU) among the backends: refuse in one line what cannot fit."""
    if "onnxruntime" not in backends:
        return
    need, room = parity_need(weight_bytes, dtype), available_memory()
    if need > room:
        raise RerouteError(
            f"parity of {artifact_root} with ONNX Runtime on CPU needs about {need / GIB:.1f} GiB ({dtype} weights "
            f"widened to fp32 by its CPU provider), {room / GIB:.1f} GiB is available; {GPU_PARITY_HINT}")
