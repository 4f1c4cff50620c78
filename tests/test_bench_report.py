"""docs/BENCHMARKS.md is rendered from docs/bench_results.json: the render path must reproduce it exactly."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_md_rerenders_byte_identical(tmp_path):
    pytest.importorskip("matplotlib")
    from exporter.bench.markdown import render

    report = json.loads((ROOT / "docs" / "bench_results.json").read_text())
    fidelity = ROOT / "docs" / "fidelity_results.json"  # its accuracy section (scripts/fidelity_report.py)
    text = render(report, tmp_path, 0.25, accuracy=json.loads(fidelity.read_text()) if fidelity.is_file() else None)
    assert text == (ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert sorted(p.name for p in (tmp_path / "img").glob("*.png")) == sorted(
        p.name for p in (ROOT / "docs" / "img").glob("*.png"))
