"""docs/FIDELITY.md and docs/fidelity_results.json from a fidelity run's report (scripts/fidelity_report.py).

Every number and every sentence that judges one comes from the report; rerunning the script rewrites both.
"""

from __future__ import annotations

from .data import KINDS
from .fidelity import MAP_RULE, pair_verdicts, unrouted_accuracy
from .report import data_line, pair_lines, table_rows

BAR = 0.90  # the bar for the unrouted model, per kind


def _table(rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + ["| " + " | ".join(r) + " |"
                                                                           for r in rows[1:]]


def _pct(acc: dict) -> str:
    return f"{100 * acc['accuracy']:.1f}% [{100 * acc['ci'][0]:.1f}, {100 * acc['ci'][1]:.1f}] (n={acc['n']})"


def _torch_subset(run: dict) -> str:
    """What torch left out, when the run was told to (--torch-methods / --torch-ratios)."""
    parts = [f"methods {', '.join(run['torch_methods'])}" if run.get("torch_methods") else "",
             f"ratios {run['torch_ratios']}" if run.get("torch_ratios") else ""]
    parts = [p for p in parts if p]
    return f"; torch ran only {' at '.join(parts)} (the rest on ONNX Runtime alone, for time)" if parts else ""


def setup_lines(report: dict, run: dict) -> list[str]:
    s = report["settings"]
    w = s["weights"]
    weights = "; ".join(f"`{f}` sha256 `{sha}`" for f, sha in w["files"].items()) or w.get("note", "?")
    budget = s["max_new_tokens"]
    why = ("given on the command line" if s["answer_slack"] is None else
           f"the longest reference answer in tokens, + EOS, + {s['answer_slack']}")
    return [
        f"- model `{s['model']}`; weights: {weights}",
        f"- {data_line(report)}; data.jsonl sha256 `{s['data_sha256']}`",
        f"- methods {', '.join(run['methods'])}; ratios {', '.join(run['ratio_labels'])} (`none` once, unrouted); "
        f"backends: {', '.join(run['backends'])} (torch: the PyTorch reference in fp32; onnxruntime: an fp32 "
        f"artifact per configuration, exported by this run, CPU execution provider)" + _torch_subset(run),
        f"- greedy decoding, at most {budget} new tokens ({why}), stopping when every sample of a batch "
        f"emitted EOS; batches of up to "
        f"{s['batch_size']} items with equal prompt lengths; each picture's vision features computed once per "
        f"backend and reused by every configuration; {s['threads']} intra-op thread(s) for torch and ONNX Runtime",
        "- scoring: VQA by normalised exact match, grounding by IoU >= 0.5 between the first box in the answer "
        "and the reference box; accuracy with its 95% Wilson interval, paired differences with Newcombe's "
        "interval; FLOPs ratio and KV bytes in the visual-token convention (`reroute inspect`)",
        f"- run: {run['finished']}, {run['wall_s'] / 60:.1f} min wall on {run['machine']}; load average "
        f"{run['load_before']} before, {run['load_after']} after (the cores are shared)",
    ]


def unrouted_lines(report: dict) -> list[str]:
    """The unrouted model against the issue's bar, from torch (or ONNX Runtime where torch did not run it)."""
    for backend in ("torch", "onnxruntime"):
        acc = unrouted_accuracy(report, backend)
        if acc:
            break
    else:
        return ["- `none` did not run"]
    lines = []
    for kind in KINDS:
        if kind in acc:
            a = acc[kind]
            verdict = "meets" if a["accuracy"] >= BAR else "does NOT meet"
            lines.append(f"- {kind} ({backend}): {_pct(a)}: {verdict} the issue's bar of {100 * BAR:.0f}%")
    return lines


def agreement_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["- ONNX Runtime did not run"]
    out = []
    for r in rows:
        tail = "" if not r["differing_lines"] else (
            f"; differing lines: {', '.join(map(str, r['differing_lines'][:10]))}"
            + (" ..." if len(r["differing_lines"]) > 10 else ""))
        out.append(f"- {r['method']} r={r['ratio']:.4f}: {r['same']}/{r['n']} answers identical "
                   f"({100 * r['same'] / max(1, r['n']):.1f}%){tail}")
    return out


def timing_rows(report: dict, settings: dict) -> list[list[str]]:
    rows = [["configuration", "seconds", "items/s"]]
    for c in report["configs"]:
        n = c["accuracy"]["all"]["n"]
        reused = settings.get("reused_from_earlier_run", [])
        reused = " (reused from an earlier run with identical inputs)" if c["label"] in reused else ""
        rows.append([c["label"] + reused, f"{c['seconds']:.1f}", f"{n / c['seconds']:.2f}" if c["seconds"] else "-"])
    for label, secs in settings.get("export_s", {}).items():
        rows.append([f"export {label} (fp32 ONNX)", f"{secs:.1f}", "-"])
    return rows


def map_lines(maps: list[dict], count: int) -> list[str]:
    lines = [f"Chosen by rule, not by eye: {MAP_RULE.format(count=count)}. Each map shows, per decision layer, "
             "the patches kept (green), deferred or deleted (dark) and re-entered from the pool (orange).", ""]
    if not maps:
        return lines + ["- no item fits either group (no configuration pair ran at that ratio on torch, or no "
                        "item was answered wrongly by the deletion)"]
    for m in maps:
        lines.append(f"### line {m['line']} ({m['group']}, {m['kind']}): {m['routed']} vs {m['deletion']} at "
                     f"r={m['ratio']:.4f}")
        lines.append("")
        lines.append(f"Question: {m['question']!r}; reference: `{m['reference']}`")
        lines.append("")
        for method in (m["deletion"], m["routed"]):
            iou = m["iou"][method]
            score = "" if iou is None else f" (IoU {iou:.2f})"
            reentered = sum(layer.get("re-entered", 0) for layer in m["summaries"][method]["per_layer"])
            lines.append(f"- {method}: answered `{m['answers'][method]}`{score}; patches re-entered over all "
                         f"decision layers: {reentered}")
        lines.append("")
        lines += [f"![{method}](fidelity/{m['files'][method]})" for method in (m["deletion"], m["routed"])]
        lines.append("")
    return lines


def render(report: dict, run: dict, agreement: list[dict], maps: list[dict], plot_name: str) -> str:
    s = report["settings"]
    L = ["# Fidelity: accuracy of routed models on the grounding task", "",
         f"Written by `scripts/fidelity_report.py` from its own run (raw numbers: "
         f"[`fidelity_results.json`](fidelity_results.json)); rerunning `{s['command']}` rewrites this page, "
         "the json, the plot and the maps.", "", "## Setup", "", *setup_lines(report, run), "",
         "## The unrouted model", "", *unrouted_lines(report), "",
         "## Accuracy per method, ratio and backend", "", *_table(table_rows(report)), "",
         f"![accuracy against FLOPs]({plot_name})", "",
         "## Rerouting against deletion at the same FLOPs (paired, all items)", ""]
    L += [f"- {line}" for line in pair_verdicts(report)] or ["- no pair ran"]
    L += ["", "Per kind:", ""] + [f"- {line}" for line in pair_lines(report) if "(all)" not in line]
    L += ["", "## ONNX Runtime (fp32) against the PyTorch reference, item by item", "", *agreement_lines(agreement),
          "", "## Time per configuration", "", *_table(timing_rows(report, s)), "",
          "## Routing maps", "", *map_lines(maps, run["maps"]), ""]
    if report["malformed"] or report["missing"]:
        L += ["## Skipped lines", ""]
        L += [f"- line {m['line']}: {m['why']}" for m in report["malformed"]]
        L += [f"- line {m['line']}: image missing or unreadable: {m['image']}" for m in report["missing"]]
        L.append("")
    return "\n".join(L)


def summary_json(report: dict, run: dict, agreement: list[dict], maps: list[dict], items: dict) -> dict:
    """The page's numbers (docs/fidelity_results.json): configs without per-item answers, per-item
    correctness as compact strings, pairs, agreement and the maps drawn."""
    configs = [{k: v for k, v in c.items() if k != "items"} for c in report["configs"]]
    return {"schema": 1, **{k: v for k, v in report.items() if k != "configs"}, "run": run, "configs": configs,
            "agreement": agreement, "maps": maps, "correct_per_item": items}
