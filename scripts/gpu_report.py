"""report.json + report.md of scripts/gpu_check.py, written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

MAX_FILES = 8  # what may come back from a device run under $OUT
REPORT_FILES = ("report.json", "report.md")


def output_files(stage_names) -> list[str]:
    """Every file a run writes under the output folder: the two reports and one log per stage."""
    files = list(REPORT_FILES) + [f"{name}.log" for name in stage_names]
    if len(files) > MAX_FILES:
        raise ValueError(f"{len(files)} output files planned, at most {MAX_FILES} come back")
    return files


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(out_dir, report: dict) -> list[Path]:
    """Write report.json and report.md; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in REPORT_FILES]
    _write_atomic(paths[0], json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(paths[1], render_markdown(report))
    return paths


def _stage_line(name: str, stage: dict) -> str:
    note = stage.get("reason") or stage.get("error") or stage.get("summary") or ""
    return f"| {name} | {stage.get('status', '?')} | {stage.get('wall_s', '-')} | {stage.get('budget_s', '-')} | {note} |"


def _kernel_lines(stage: dict) -> list[str]:
    if "results" not in stage:  # dry run, skipped or crashed: the stage table says why
        return []
    lines = [f"Kernels ({stage.get('arch')}): {stage['cases'] - len(stage['failed'])}/{stage['cases']} cases exact."]
    lines += [f"- FAILED {r['name']}: {r['detail']}" for r in stage["failed"]]
    return lines + [""]


def _parity_lines(stage: dict) -> list[str]:
    if "per_sample" not in stage:
        return []
    lines = [f"Parity on {stage['model']} ({stage['rule']}):", "",
             "| backend | max abs logit diff | logits ok | routing identical | tokens identical |", "|---|---|---|---|---|"]
    for label, samples in stage["per_sample"].items():
        worst = max(s["max_abs_logit_diff"] for s in samples)
        count = lambda key: f"{sum(s[key] for s in samples)}/{len(samples)}"  # noqa: E731
        lines.append(f"| {label} | {worst:.3g} | {count('logits_within_tolerance')} | {count('routing_identical')} | "
                     f"{count('tokens_identical')} |")
    return lines + [""]


def _bench_lines(stage: dict) -> list[str]:
    lines = []
    for shape in stage.get("shapes", []):
        if "skipped" in shape:
            lines += [f"Bench {shape['shape']}: skipped ({shape['skipped']})", ""]
            continue
        lines += [f"Bench {shape['shape']} ({shape['parameters'] / 1e9:.2f} B params, fp16, {shape['prompt_tokens']} "
                  f"prompt tokens, ratio {shape['ratio']}, {shape['rounds']} interleaved rounds; ratios are medians of "
                  f"per-round ratios to `none`):", "",
                  "| method | prefill ms | prefill ratio | decode ms/token | decode ratio | KV tokens |",
                  "|---|---|---|---|---|---|"]
        for method, m in shape["methods"].items():
            lines.append(f"| {method} | {m['prefill_ms']:.2f} | {m['prefill_ratio']:.3f} | "
                         f"{m['decode_ms_per_token']:.3f} | {m['decode_ratio']:.3f} | {shape['kv_tokens'][method]} |")
        lines.append("")
    return lines


def render_markdown(report: dict) -> str:
    title = "GPU check (dry run: nothing ran on a GPU)" if report.get("dry_run") else "GPU check"
    lines = [f"# {title}", "", f"Machine: {report.get('machine', '?')}. Total {report.get('wall_s', '-')} s "
             f"of a {report.get('budget_s', '-')} s budget.", "",
             "| stage | status | wall s | budget s | note |", "|---|---|---|---|---|"]
    stages = report.get("stages", {})
    lines += [_stage_line(name, stage) for name, stage in stages.items()] + [""]
    lines += _kernel_lines(stages.get("kernels", {}))
    lines += _parity_lines(stages.get("parity", {}))
    lines += _bench_lines(stages.get("bench", {}))
    for note in report.get("checks", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"
