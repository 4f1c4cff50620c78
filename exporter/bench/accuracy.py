"""docs/BENCHMARKS.md's accuracy section: the fidelity run's accuracy (docs/fidelity_results.json, written by
scripts/fidelity_report.py) beside this run's latency, for the configs both measured."""

from __future__ import annotations

from .tables import METHOD_ORDER, _table


def _accuracy(fid: dict, method: str, ratio: float, backend: str) -> str:
    for c in fid["configs"]:
        if c["method"] == method and c["backend"] == backend and (method == "none" or abs(c["ratio"] - ratio) < 1e-4):
            a = c["accuracy"]["all"]
            return f"{100 * a['accuracy']:.1f}% [{100 * a['ci'][0]:.1f}, {100 * a['ci'][1]:.1f}]"
    return "-"


def _schedules(report: dict, settings: dict) -> str:
    """Whether a method x ratio means the same schedule in both runs (it depends on layers and N_v only)."""
    bench = (report["decoder"]["num_layers"], report["num_visual"])
    fid = (settings.get("num_layers"), settings.get("num_visual"))
    if bench == fid:
        return (f"Both have {bench[0]} decoder layers and {bench[1]} visual tokens: each method x ratio is the "
                "same schedule.")
    return (f"The schedules DIFFER ({bench[0]} layers / {bench[1]} visual tokens here, {fid[0]} / {fid[1]} in the "
            "fidelity run): compare with care.")


def accuracy_section(report: dict, fid: dict | None) -> list[str]:
    """Markdown lines (none without a fidelity json): per ratio both runs share and per method, accuracy on
    torch and ONNX Runtime beside the ONNX Runtime prefill and decode times relative to unrouted."""
    if not fid:
        return []
    fid_ratios = {round(c["ratio"], 4) for c in fid["configs"] if c["method"] != "none"}
    rows = []
    for r in sorted(report["results"], key=lambda r: (-r["ratio"], METHOD_ORDER.index(r["method"]))):
        if r["backend"] != "onnxruntime" or round(r["ratio"], 4) not in fid_ratios:
            continue
        rows.append([r["ratio_label"], f"`{r['method']}`", _accuracy(fid, r["method"], r["ratio"], "torch"),
                     _accuracy(fid, r["method"], r["ratio"], "onnxruntime"),
                     f"{r['vs_unrouted']['prefill']['median']:.3f}",
                     f"{r['vs_unrouted']['decode_per_token']['median']:.3f}"])
    settings = fid["settings"]
    weights = "; ".join(f"`{f}` sha256 `{sha[:12]}...`" for f, sha in settings["weights"]["files"].items())
    lines = ["## Accuracy beside latency", "",
             f"Accuracy (all items, 95% Wilson interval) from [FIDELITY.md](FIDELITY.md): `{settings['model']}` "
             f"({weights or settings['weights'].get('note', '')}) on {fid['items']} items of {fid['data']}, "
             f"run {fid['run']['finished']}. Latency from this page's run of `{report['model']}` "
             f"(random weights, so its own answers mean nothing; hence two models). {_schedules(report, settings)} "
             "Times: ONNX Runtime, median of the per-run paired ratios to the unrouted model.", ""]
    if not rows:
        return lines + ["No ratio was measured by both runs.", ""]
    return lines + _table(["ratio", "method", "accuracy torch", "accuracy ONNX Runtime", "ORT prefill x unrouted",
                           "ORT decode x unrouted"], rows) + [""]

