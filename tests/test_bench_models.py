"""Further models in docs/BENCHMARKS.md (exporter/bench/markdown_models.py, scripts/bench_report.py --add-model-json)."""

import copy
import json
from pathlib import Path

import pytest

from exporter.bench.markdown_models import add_model, bench_command, model_sections

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report():
    return json.loads((ROOT / "docs" / "bench_results.json").read_text())


def _as_other_model(report, name="qwen2.5-vl-bench"):
    """The main report's own run standing in for another model's (same schema)."""
    other = {k: copy.deepcopy(v) for k, v in report.items() if k != "extra_models"}
    other["model"], other["source"] = name, f"preset:{name}"
    other.pop("command", None)
    return other


def test_add_model_replaces_the_same_model_and_refuses_the_main_one(report):
    other = _as_other_model(report)
    merged = add_model(add_model(report, other), {**other, "elapsed_s": 1.0})
    assert [m["model"] for m in merged["extra_models"]] == ["qwen2.5-vl-bench"]
    assert merged["extra_models"][0]["elapsed_s"] == 1.0
    assert merged["results"] == report["results"]  # the main report is untouched
    with pytest.raises(ValueError, match="own model"):
        add_model(report, {**other, "model": report["model"]})


def test_section_states_every_result_of_the_other_model(report):
    other = _as_other_model(report)
    lines = model_sections(add_model({k: v for k, v in report.items() if k != "extra_models"}, other))
    text = "\n".join(lines)
    assert lines[0] == "## Qwen2.5-VL (`qwen2.5-vl-bench`)"
    rows = [line for line in lines if line.startswith("| ") and "`" in line]
    assert len(rows) == len(other["results"])
    reroute = next(r for r in other["results"] if r["method"] == "reroute" and r["backend"] == "onnxruntime"
                   and r["ratio"] == 0.25)
    row = next(line for line in rows if line.startswith("| 1/4 | `reroute` | onnxruntime"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == ", ".join(str(k) for k in reroute["schedule"]["k"])
    assert cells[7] == (f"{reroute['vs_unrouted']['prefill']['median']:.3f} [{reroute['vs_unrouted']['prefill']['min']:.3f}-"
                        f"{reroute['vs_unrouted']['prefill']['max']:.3f}]")
    assert cells[11] == ("exact" if reroute["kv_bytes"]["match"] else "MISMATCH")
    assert bench_command(other) in text and "--model qwen2.5-vl-bench" in bench_command(other)
    main_only = {k: v for k, v in report.items() if k != "extra_models"}
    assert model_sections(main_only) == []  # no further models: nothing rendered


def test_bench_report_script_merges_and_renders(report, tmp_path):
    pytest.importorskip("matplotlib")
    import subprocess
    import sys

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bench_results.json").write_text(json.dumps(report))
    extra = tmp_path / "qwen.json"
    extra.write_text(json.dumps(_as_other_model(report)))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_report.py"), "--add-model-json", str(extra),
                           "--docs", str(docs), "--readme", ""], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((docs / "bench_results.json").read_text())
    assert [m["model"] for m in merged["extra_models"]] == ["qwen2.5-vl-bench"]
    assert "## Qwen2.5-VL (`qwen2.5-vl-bench`)" in (docs / "BENCHMARKS.md").read_text()
