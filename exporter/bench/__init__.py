"""``reroute bench``: latency, memory, KV bytes and FLOPs of every method, measured interleaved.

Read in this order: ``run`` (the whole bench: schedules, artifacts, groups, the report dict) ->
``measure`` (timed rounds, contention guard) -> ``machine`` (machine facts, memory probe) ->
``artifacts`` -> ``results`` (rows, FLOPs theory) -> ``profiles`` -> ``fidelity`` -> ``targets``
(verdicts) -> ``report`` (text, JSON) -> ``markdown`` / ``plots`` / ``analysis`` (docs/BENCHMARKS.md).
"""

from .common import (BACKENDS, BASELINE, DEFAULT_METHODS, DEFAULT_RATIOS, ROUTING_VS_DELETION, bench_prompt,
                     ratio_label, summarize)
from .fidelity import run_fidelity
from .measure import timing_order
from .options import BenchOptions
from .profiles import summarize_profile
from .report import file_mode, format_bench, write_json
from .results import theory
from .run import run_bench
from .targets import evaluate_targets, same_round_ratio

__all__ = ["BACKENDS", "BASELINE", "BenchOptions", "DEFAULT_METHODS", "DEFAULT_RATIOS", "ROUTING_VS_DELETION",
           "bench_prompt", "evaluate_targets", "file_mode", "format_bench", "ratio_label", "run_bench", "run_fidelity",
           "same_round_ratio", "summarize", "summarize_profile", "theory", "timing_order", "write_json"]
