"""What one bench run measures: the options the CLI and scripts/bench_report.py fill and tests construct."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .common import BACKENDS, DEFAULT_METHODS, DEFAULT_RATIOS


@dataclass
class BenchOptions:
    """``artifacts``: folder where exported artifacts are kept and reused (default: a temporary folder,
    deleted at the end; routed artifacts are then deleted after their ratio group, as they are with
    ``keep_artifacts=False``). ``profile_ratios``: ratios whose ONNX Runtime prefill and decode (and
    torch prefill) are also run once under a profiler (per-op and per-layer time). ``torch_ratios``:
    measure the torch backend only at these ratios (default: at every ratio). ``min_cpu_share``: rounds
    in which any timed call got less than this share of the cores are repeated (0 disables)."""

    model: str = "llava-bench"
    methods: Sequence[str] = DEFAULT_METHODS
    ratios: Sequence[float] = DEFAULT_RATIOS
    backends: Sequence[str] = BACKENDS
    runs: int = 3
    warmup: int = 1
    decode_steps: int = 8
    text_tokens: int = 40
    fidelity: bool = False
    fidelity_samples: int = 4
    fidelity_steps: int = 8
    artifacts: str | None = None
    keep_artifacts: bool = True
    profile_ratios: Sequence[float] = ()
    torch_ratios: Sequence[float] | None = None
    quiet: bool = False
    pause_s: float = 0.02  # idle time before each timed prefill
    min_cpu_share: float = 0.9
    torch_options: dict | None = None  # TorchBackend device/dtype (exporter/devices.py:torch_options)
