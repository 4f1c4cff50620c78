"""Further models in docs/BENCHMARKS.md (e.g. Qwen2.5-VL): their own bench reports, kept in the main report's
``extra_models`` list (``scripts/bench_report.py --add-model-json``) and rendered as one section each.

Every figure comes from that model's own run: times are paired ratios to the unrouted model of the same
round, KV bytes are measured from the caches the graphs returned and compared with the schedule.
"""

from __future__ import annotations

from .common import BASELINE
from .tables import _rows, _spread, _table

FAMILY_TITLES = {"qwen2.5-vl": "Qwen2.5-VL"}


def add_model(report: dict, extra: dict) -> dict:
    """``report`` with ``extra`` (another model's ``reroute bench`` report) as one of its further models;
    a previous entry for the same model is replaced."""
    if extra.get("model") == report.get("model"):
        raise ValueError(f"{extra.get('model')} is the report's own model, not a further one")
    kept = [m for m in report.get("extra_models", []) if m.get("model") != extra.get("model")]
    return {**report, "extra_models": [*kept, extra]}


def model_sections(report: dict) -> list[str]:
    lines = []
    for extra in report.get("extra_models", []):
        lines += _section(extra)
    return lines


def bench_command(report: dict) -> str:
    """The ``reroute bench`` line that produced ``report`` (from its recorded settings)."""
    s = report["settings"]
    routed = [m for m in s["methods"] if m != BASELINE]
    line = (f"reroute bench --model {report['model']} --methods {','.join(routed)} --ratios "
            f"{','.join(s['ratio_labels'])} --backends {','.join(s['backends'])} --runs {s['runs']} --warmup "
            f"{s['warmup']} --decode-steps {s['decode_steps']} --text-tokens {s['text_tokens']}")
    return line + (" --min-cpu-share 0" if s.get("contention_guard") == "off" else "")


def _title(model: str) -> str:
    return next((t for prefix, t in FAMILY_TITLES.items() if model.startswith(prefix)), model)


def _section(r: dict) -> list[str]:
    d, s, m, pr = r["decoder"], r["settings"], r["machine"], r["prompt"]
    lines = [f"## {_title(r['model'])} (`{r['model']}`)", ""]
    lines += [f"- model: `{r['model']}` ({r['source']}): {d['num_layers']} layers, hidden {d['hidden_size']}, "
              f"{d['num_heads']} heads on {d['num_kv_heads']} KV heads, MLP {d['intermediate_size']}, vocab "
              f"{d['vocab_size']}, fp32, random weights",
              f"- prompt: {pr['tokens']} tokens = {r['num_visual']} visual + {pr['text_tokens']} text; batch 1",
              f"- methods {', '.join(s['methods'])}; ratios {', '.join(s['ratio_labels'])}; backends "
              f"{', '.join(s['backends'])}; {s['runs']} timed runs after {s['warmup']} warm-up run(s), "
              f"{s['decode_steps']} greedy decode steps per run; contention guard: {s.get('contention_guard', 'off')}",
              f"- machine: {m['cpu']}, {m['usable_cores']} usable cores, shared: load average "
              f"{m.get('load_average_before')} before, {m.get('load_average_after')} after the run "
              f"({r['elapsed_s'] / 60:.1f} min); only same-run ratios are compared", ""]
    lines += [f"Notes: {'; '.join(r.get('notes', []))}.", ""]
    rows = []
    for x in _rows(r):
        rows.append([x["ratio_label"], f"`{x['method']}`", x["backend"],
                     ", ".join(str(k) for k in x["schedule"]["k"]) or "-",
                     f"{x['schedule']['avg_visual_tokens']:.1f}", f"{x['tflops']['all_tokens']['ratio']:.3f}",
                     _spread(x["prefill_s"], 1, 3), _spread(x["vs_unrouted"]["prefill"]),
                     _spread(x["decode_per_token_s"], 1e3, 1), _spread(x["vs_unrouted"]["decode_per_token"]),
                     f"{x['kv_bytes']['measured'] / 2**20:.2f}", "exact" if x["kv_bytes"]["match"] else "MISMATCH"])
    lines += ["Times: median [min-max] over runs; 'x unrouted': median [min-max] of the per-run ratios to the "
              "unrouted model of the same round. k: visual tokens kept per stage for this image's N_v (computed "
              "in the graph). KV: bytes of the caches the prefill returned, compared with the schedule's "
              "per-layer token counts.", ""]
    lines += _table(["ratio", "method", "backend", "k per stage", "visual tokens / layer", "FLOPs x (all tokens)",
                     "prefill s", "prefill x unrouted", "decode ms/token", "decode x unrouted", "KV MiB",
                     "KV = schedule"], rows)
    lines += ["", "```bash", r.get("command") or bench_command(r), "```", ""]
    return lines
