"""Results rows: SPEC section 6 FLOPs and predicted KV bytes beside the measured times, memory and KV."""

from __future__ import annotations

from .common import BASELINE, _paired, ratio_label, summarize

def theory(cfg, schedule, text_tokens: int) -> dict:
    """SPEC section 6 figures in both conventions, and the predicted KV bytes (fp32)."""
    from graphs.flops import flops, kv_bytes, reused_flops, tokens_per_layer

    out = {}
    for name, text in (("visual", 0), ("all_tokens", text_tokens)):
        rep = flops(cfg, schedule, text)
        executed = rep.routed + rep.scoring - reused_flops(cfg, schedule, text)
        out[name] = {"full": rep.full / 1e12, "routed": rep.routed / 1e12, "scoring_overhead": rep.scoring / 1e12,
                     "routed_plus_scoring": (rep.routed + rep.scoring) / 1e12,
                     "ratio": (rep.routed + rep.scoring) / rep.full, "text_tokens": text,
                     # what the graph executes: the decision layers reuse the kept rows of the scoring k_proj
                     "executed_ratio": executed / rep.full}
    out["formula"] = "4nd^2 + 2n^2d + 3ndm per layer (SwiGLU); scoring = one row per decision layer"
    predicted = kv_bytes(cfg, tokens_per_layer(schedule, text_tokens), 4)
    return {"tflops": out, "kv_predicted": predicted,
            "tokens_per_layer": tokens_per_layer(schedule, text_tokens)}


def _result_row(schedule, ratio, backend, group, th, cfg) -> dict:
    d = group[(schedule.method, backend)]
    base = group[(BASELINE, backend)]
    kv_measured = d.get("kv_measured")
    return {
        "method": schedule.method, "action": schedule.action, "ratio": ratio, "ratio_label": ratio_label(ratio),
        "backend": backend,
        "schedule": {"layers": list(schedule.layers), "k": list(schedule.k),
                     "keep_ratios": [round(r, 6) for r in schedule.keep_ratios], "value": schedule.value,
                     "avg_visual_tokens": schedule.avg_visual_tokens()},
        "prefill_s": summarize(d["prefill"]),
        "decode_per_token_s": summarize(d["decode"]),
        "vs_unrouted": {"prefill": _paired(d["prefill"], base["prefill"]),
                        "decode_per_token": _paired(d["decode"], base["decode"])},
        "vs_unrouted_best": {"prefill": min(d["prefill"]) / min(base["prefill"]),
                             "decode_per_token": min(d["decode"]) / min(base["decode"])},
        "cpu_share": {"prefill": summarize(d["prefill_cpu"]), "decode": summarize(d["decode_cpu"])},
        "rounds": d.get("rounds"),
        "peak_rss_growth_mib": {"prefill_first_call": d["peak_prefill"], "decode_first_sequence": d["peak_decode"],
                                "session_load": d["session_mib"]},
        "kv_bytes": {"measured": kv_measured, "predicted": th["kv_predicted"],
                     "match": kv_measured == th["kv_predicted"],
                     "tokens_per_layer_measured": d.get("kv_lengths"),
                     "tokens_per_layer_predicted": th["tokens_per_layer"],
                     "dtype": "float32"},
        "tflops": th["tflops"],
        "first_token": d.get("first_token"),
    }


def _ort_vs_torch(results) -> list[dict]:
    """ONNX Runtime prefill / torch prefill on the same routed model, paired by run index."""
    rows = {(r["method"], r["ratio"], r["backend"]): r for r in results}
    out = []
    for (method, ratio, backend), r in rows.items():
        t = rows.get((method, ratio, "torch"))
        if backend != "onnxruntime" or t is None:
            continue
        pair = _paired(r["prefill_s"]["values"], t["prefill_s"]["values"])
        dec = _paired(r["decode_per_token_s"]["values"], t["decode_per_token_s"]["values"])
        out.append({"method": method, "ratio": ratio, "ratio_label": r["ratio_label"],
                    "prefill_ort_over_torch": pair, "decode_ort_over_torch": dec,
                    "best": {"prefill": r["prefill_s"]["min"] / t["prefill_s"]["min"],
                             "decode_per_token": r["decode_per_token_s"]["min"] / t["decode_per_token_s"]["min"]}})
    return out
