"""Targets (a)-(d) and their verdicts, from a bench report."""

from __future__ import annotations

from .common import BASELINE, ROUTING_VS_DELETION, _paired

def same_round_ratio(row_a: dict, row_b: dict, key: str = "prefill_s") -> float:
    """Median over rounds of a's time / b's time in the same round (rows from one ratio group)."""
    a, b = row_a[key]["values"], row_b[key]["values"]
    if len(a) != len(b) or not a:
        raise ValueError(f"rows have {len(a)} and {len(b)} rounds; a same-round ratio needs equal, non-zero counts")
    return _paired(a, b)["median"]


def evaluate_targets(report: dict, ratio: float = 0.25, backend: str = "onnxruntime",
                     stat: str = "median") -> list[dict]:
    """Targets (a)-(d) at ``ratio``; each entry: target, subject, value, limit, passed, detail.

    ``stat="median"`` (the verdict): the median over runs of each run's ratio to the unrouted model
    timed in the same interleaved round, which cancels the drift of a shared machine;
    ``stat="best"``: ratios of the best (minimum) times, which assumes noise only adds time
    independently per call (shown alongside; on this kind of VM it swings with one lucky call).
    """
    if stat not in ("best", "median"):
        raise ValueError(f"stat must be 'best' or 'median', got {stat!r}")
    rows = {(r["method"], r["backend"]): r for r in report["results"] if abs(r["ratio"] - ratio) < 1e-9}
    out = []

    def ratio_of(r, key):
        return r["vs_unrouted_best"][key] if stat == "best" else r["vs_unrouted"][key]["median"]

    def add(tid, subject, value, limit, passed, detail):
        out.append({"target": tid, "subject": subject, "value": value, "limit": limit, "passed": bool(passed),
                    "detail": detail, "stat": stat})

    routed = [m for m in report["settings"]["methods"] if m != BASELINE and (m, backend) in rows]
    for m in routed:
        r = rows[(m, backend)]
        measured = ratio_of(r, "prefill")
        fl = r["tflops"]["all_tokens"]["ratio"]
        limit = 1.10 * fl
        add("a", m, measured, limit, measured <= limit,
            f"prefill {measured:.3f}x unrouted vs FLOPs {fl:.3f}x (all tokens + scoring); limit {limit:.3f}; "
            f"{'within' if measured <= limit else 'over'} by {abs(measured / limit - 1) * 100:.1f}%")
    for a, b in ROUTING_VS_DELETION:
        if (a, backend) in rows and (b, backend) in rows:
            ra, rb = rows[(a, backend)], rows[(b, backend)]
            if stat == "best":
                value, how = ratio_of(ra, "prefill") / ratio_of(rb, "prefill"), "ratio of best times"
            else:
                value, how = same_round_ratio(ra, rb, "prefill_s"), "median over rounds of the same-round ratio"
            add("b", f"{a} vs {b}", value, 1.03, value <= 1.03,
                f"{a} prefill = {value:.3f}x {b} ({how}); limit 1.03; "
                f"{'within' if value <= 1.03 else 'over'} by {abs(value / 1.03 - 1) * 100:.1f}%")
    for m in routed:
        r = rows[(m, backend)]
        value = ratio_of(r, "decode_per_token")
        kv_ok = r["kv_bytes"]["match"]
        add("c", m, value, 0.85, value <= 0.85 and kv_ok,
            f"decode {value:.3f}x unrouted per token (limit 0.85, {'within' if value <= 0.85 else 'over'} by "
            f"{abs(value / 0.85 - 1) * 100:.1f}%); KV bytes {r['kv_bytes']['measured']} "
            f"{'==' if kv_ok else '!='} predicted {r['kv_bytes']['predicted']}")
    for row in report.get("ort_vs_torch", []):
        if abs(row["ratio"] - ratio) < 1e-9 and row["method"] != BASELINE:
            value = row["best"]["prefill"] if stat == "best" else row["prefill_ort_over_torch"]["median"]
            add("d", row["method"], value, 1.0, value < 1.0,
                f"ONNX Runtime prefill = {value:.3f}x torch on the same routed model "
                f"({'faster' if value < 1 else 'slower'} by {abs(1 - value) * 100:.1f}%)")
    return out
