"""Summaries of an eval run: accuracy with Wilson CIs per config and kind, paired differences, text and JSON."""

from __future__ import annotations

import math

from .data import KINDS, Dataset
from .runner import ConfigResult
from .stats import paired_difference, wilson_interval

# (routed, deletion baseline on the same stages): the comparisons the paper makes
PAIRS = (("reroute", "pdrop"), ("reroute-fastv", "fastv"))
CI_METHODS = {"accuracy": "Wilson score interval, 95%",
              "difference": "Newcombe (1998) method 10 paired interval, 95% (hybrid Wilson score, phi-corrected)"}


def accuracy(results: list, kind: str | None = None) -> dict:
    picked = [r for r in results if kind is None or r.kind == kind]
    correct = sum(r.correct for r in picked)
    n = len(picked)
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else None, "ci": [low, high]}


def summarize(result: ConfigResult, with_items: bool = True) -> dict:
    row = {"method": result.method, "ratio": result.ratio, "backend": result.backend, "label": result.label,
           **result.costs, "seconds": round(result.seconds, 3),
           "accuracy": {"all": accuracy(result.items),
                        **{k: accuracy(result.items, k) for k in KINDS if any(r.kind == k for r in result.items)}},
           "unparseable_boxes": sum(r.unparseable for r in result.items)}
    if with_items:
        row["items"] = [{"line": r.index, "kind": r.kind, "answer": r.answer, "correct": r.correct,
                         **({"iou": r.iou, "unparseable": r.unparseable} if r.kind == "grounding" else {})}
                        for r in result.items]
    return row


def paired_rows(results: list[ConfigResult]) -> list[dict]:
    rows = []
    for a_name, b_name in PAIRS:
        for a in (r for r in results if r.method == a_name):
            for b in results:
                if b.method != b_name or b.backend != a.backend or not math.isclose(a.ratio, b.ratio, abs_tol=1e-6):
                    continue
                for kind in (None, *KINDS):
                    xs = [r.correct for r in a.items if kind is None or r.kind == kind]
                    ys = [r.correct for r in b.items if kind is None or r.kind == kind]
                    if xs:
                        diff = paired_difference(xs, ys)
                        rows.append({"a": a.label, "b": b.label, "method_a": a_name, "method_b": b_name,
                                     "ratio": a.ratio, "backend": a.backend, "kind": kind or "all", **diff,
                                     "ci": list(diff["ci"])})
    return rows


def build_report(data: Dataset, results: list[ConfigResult], settings: dict) -> dict:
    return {"data": str(data.root), **data.counts(),
            "malformed": [{"line": n, "why": why} for n, why in data.malformed],
            "missing": [{"line": n, "image": path} for n, path in data.missing_images],
            "settings": settings, "ci_methods": CI_METHODS,
            "configs": [summarize(r) for r in results], "pairs": paired_rows(results)}


def _pct(acc: dict) -> str:
    if not acc or acc["n"] == 0:
        return "-"
    low, high = acc["ci"]
    return f"{100 * acc['accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={acc['n']})"


def table_rows(report: dict) -> list[list[str]]:
    header = ["method", "ratio", "backend", "FLOPs", "KV MiB", "all", *KINDS, "unparseable"]
    rows = [header]
    for c in report["configs"]:
        rows.append([c["method"], f"{c['ratio']:.4f}", c["backend"], f"{c['flops_ratio']:.3f}x",
                     f"{c['kv_bytes'] / 2**20:.2f}", _pct(c["accuracy"]["all"]),
                     *[_pct(c["accuracy"].get(k)) for k in KINDS], str(c["unparseable_boxes"])])
    return rows


def pair_lines(report: dict) -> list[str]:
    return [f"{p['method_a']} - {p['method_b']} at r={p['ratio']:.4f} on {p['backend']} ({p['kind']}): "
            f"{100 * p['difference']:+.1f} pts [{100 * p['ci'][0]:+.1f}, {100 * p['ci'][1]:+.1f}] "
            f"(n={p['n']}, only {p['method_a']} right {p['only_a']}, only {p['method_b']} right {p['only_b']})"
            for p in report["pairs"]]


def data_line(report: dict) -> str:
    kinds = ", ".join(f"{report[f'items_{k}']} {k}" for k in KINDS)
    return (f"data {report['data']}: {report['items']} items ({kinds}); "
            f"{report['malformed_lines']} malformed lines, {report['missing_images']} missing images skipped")


def format_text(report: dict) -> str:
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [data_line(report), "accuracy with 95% Wilson interval; FLOPs and KV bytes in the visual-token convention"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if report["pairs"]:
        lines += ["paired differences (95% Newcombe interval):", *("  " + line for line in pair_lines(report))]
    return "\n".join(lines)
