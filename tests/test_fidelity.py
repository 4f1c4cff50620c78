"""The fidelity run's pieces: vision features shared across eval configs, scripts/fidelity_report.py end to end
(llava-tiny, a few items), and the accuracy section docs/BENCHMARKS.md renders from its json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.samples import synthetic_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Three pictures, two items each (as make_grounding_data.py writes them): one grounding, one vqa."""
    root = tmp_path_factory.mktemp("fiddata")
    (root / "images").mkdir()
    lines = []
    for i in range(3):
        synthetic_image(i, size=(336, 336)).save(root / "images" / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "kind": "grounding", "bbox": [0.1, 0.2, 0.5, 0.6],
                      "question": "Please provide the bounding box coordinate of the region this sentence "
                                  "describes: the red circle.", "answer": "[0.10, 0.20, 0.50, 0.60]"})
        lines.append({"image": f"images/{i}.png", "kind": "vqa", "answer": "red",
                      "question": "What colour is the shape left of the blue circle?"})
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_vision_runs_once_per_image_and_answers_do_not_change(data_dir, monkeypatch):
    """Two configs of one model: the tower sees each of the 3 pictures once (not 6 items x 2 configs), and
    every answer equals the one a config run alone (nothing shared) gives."""
    from engines.torch_runner import TorchBackend
    from exporter.evaluation.data import load_dataset
    from exporter.evaluation.runner import model_configs, run_eval

    calls = []
    original = TorchBackend.vision
    monkeypatch.setattr(TorchBackend, "vision", lambda self, px, *a: calls.append(len(px)) or original(self, px, *a))
    data = load_dataset(data_dir)
    shared = run_eval(model_configs("llava-tiny", ["pdrop", "reroute"], [1 / 9]), data, batch_size=4,
                      max_new_tokens=4, quiet=True)
    assert sum(calls) == 3
    calls.clear()
    alone = [run_eval(model_configs("llava-tiny", [m], [1 / 9]), data, batch_size=2, max_new_tokens=4, quiet=True)[0]
             for m in ("pdrop", "reroute")]
    assert sum(calls) == 12  # one config per run: nothing shared, each item of each run through the tower
    for a, b in zip(shared, alone):
        assert [(r.index, r.answer) for r in a.items] == [(r.index, r.answer) for r in b.items]


def _result(method, ratio, backend, right, answers=None, kinds=("grounding", "vqa", "grounding", "vqa")):
    from exporter.evaluation.runner import ConfigResult, ItemResult

    items = [ItemResult(i + 1, kind, (answers or {}).get(i + 1, f"a{i + 1}"), (i + 1) in right)
             for i, kind in enumerate(kinds)]
    return ConfigResult(method, ratio, backend, f"{method} r={ratio:.4f} {backend}", {}, items)


def test_map_choices_follow_the_stated_rule():
    from exporter.evaluation.fidelity import map_choices

    results = [_result("pdrop", 1 / 9, "torch", {1}), _result("reroute", 1 / 9, "torch", {1, 2, 3}),
               _result("reroute", 1 / 9, "onnxruntime", {4}),  # ORT runs never choose
               _result("fastv", 1 / 9, "torch", set()), _result("reroute-fastv", 1 / 9, "torch", set())]
    chosen = [(m["routed"], m["group"], m["line"]) for m in map_choices(results, 1 / 9, count=1)]
    # recovered: routed right, deletion wrong (grounding line 3 before vqa line 2); not recovered: both wrong
    assert chosen == [("reroute", "recovered", 3), ("reroute", "not recovered", 4),
                      ("reroute-fastv", "not recovered", 1)]


def test_agreement_and_verdicts_come_from_the_numbers(tmp_path):
    from exporter.evaluation.data import Dataset
    from exporter.evaluation.fidelity import ResultStore, agreement, pair_verdicts
    from exporter.evaluation.report import build_report

    torch_run = _result("reroute", 1 / 9, "torch", {1, 2, 3, 4})
    ort_run = _result("reroute", 1 / 9, "onnxruntime", {1, 2, 3, 4}, answers={3: "other"})
    assert agreement([torch_run, ort_run]) == [{"method": "reroute", "ratio": 1 / 9, "n": 4, "same": 3,
                                                "differing_lines": [3]}]
    store = ResultStore(tmp_path, "k" * 64)
    store.save(ort_run)
    assert store.finished([ort_run.label, "absent"]) == {ort_run.label: ort_run}
    assert ResultStore(tmp_path, "j" * 64).finished([ort_run.label]) == {}  # other inputs: nothing reused

    kinds = ("vqa",) * 40
    better = _result("reroute", 1 / 9, "torch", set(range(1, 41)), kinds=kinds)
    worse = _result("pdrop", 1 / 9, "torch", set(range(1, 11)), kinds=kinds)
    same = _result("pdrop", 1 / 9, "torch", set(range(1, 40)), kinds=kinds)
    data = Dataset(tmp_path, [])
    [line] = pair_verdicts(build_report(data, [better, worse], {}))
    assert "+75.0 points" in line and "reroute is more accurate than pdrop" in line
    [line] = pair_verdicts(build_report(data, [better, same], {}))
    assert "+2.5 points" in line and "interval contains 0" in line


def test_benchmarks_accuracy_section():
    from exporter.bench.accuracy import accuracy_section

    def bench_row(method, ratio, label, backend="onnxruntime"):
        return {"method": method, "ratio": ratio, "ratio_label": label, "backend": backend,
                "vs_unrouted": {"prefill": {"median": 0.5}, "decode_per_token": {"median": 0.7}}}

    report = {"model": "llava-bench", "decoder": {"num_layers": 32}, "num_visual": 576,
              "results": [bench_row("pdrop", 1 / 9, "1/9"), bench_row("reroute", 1 / 9, "1/9"),
                          bench_row("reroute", 1 / 4, "1/4"), bench_row("reroute", 1 / 9, "1/9", "torch")]}
    acc = {"accuracy": 0.625, "ci": [0.3, 0.85]}
    fid = {"items": 8, "data": "test", "run": {"finished": "now"},
           "settings": {"model": "llava-grounding", "weights": {"files": {"w.safetensors": "ab" * 32}},
                        "num_layers": 32, "num_visual": 576},
           "configs": [{"method": "reroute", "ratio": 1 / 9, "backend": "torch", "accuracy": {"all": acc}}]}
    text = "\n".join(accuracy_section(report, fid))
    assert "| 1/9 | `pdrop` | - | - | 0.500 | 0.700 |" in text  # measured by the bench only
    assert "| 1/9 | `reroute` | 62.5% [30.0, 85.0] | - | 0.500 | 0.700 |" in text
    assert "1/4" not in text.split("| ratio |")[1]  # the fidelity run has no 1/4
    assert "each method x ratio is the same schedule" in text
    assert accuracy_section(report, None) == []


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fidelity_report", ROOT / "scripts" / "fidelity_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_configs_split_by_expected_time():
    from types import SimpleNamespace

    def config(label, backend, flops):
        return SimpleNamespace(label=label, backend_name=backend, costs=lambda: {"flops_ratio": flops})

    configs = [config("none torch", "torch", 1.0), config("none ort", "onnxruntime", 1.0)]
    configs += [config(f"r{i} {b}", b, 0.1) for i in range(4) for b in ("torch", "onnxruntime")]
    a, b = _script().split_configs(configs, 2)
    assert a | b == {c.label for c in configs} and not a & b
    assert "none torch" in a and "none ort" in b  # the two dearest apart
    # torch unrouted (63) + ... vs ORT unrouted (28.5) + ...: the loads end within one routed config
    cost = {"torch": lambda f: 3 + 60 * f, "onnxruntime": lambda f: 4.5 + 24 * f}
    loads = [sum(cost[c.backend_name](c.costs()["flops_ratio"]) for c in configs if c.label in part)
             for part in (a, b)]
    assert abs(loads[0] - loads[1]) <= 9


def test_fidelity_report_end_to_end(data_dir, tmp_path):
    """The script on llava-tiny (random weights: formats and agreement, not accuracy), two configs x two
    backends, 2 items, two processes: page, json, plot and BENCHMARKS.md's accuracy section written."""
    import shutil

    script = _script()
    root = ROOT
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(root / "docs" / "bench_results.json", docs)
    argv = ["--model", "llava-tiny", "--data", str(data_dir), "--limit", "2", "--methods", "pdrop,reroute",
            "--ratios", "1/9", "--max-new-tokens", "3", "--batch-size", "2", "--out", str(docs / "FIDELITY.md"),
            "--artifacts", str(tmp_path / "art"), "--bench-json", str(docs / "bench_results.json"), "--maps", "1"]
    assert script.main(argv) == 0
    page = (docs / "FIDELITY.md").read_text()
    for heading in ("## Setup", "## Accuracy per method", "## Rerouting against deletion", "## ONNX Runtime (fp32)",
                    "## Time per configuration", "## Routing maps"):
        assert heading in page
    assert "seeded random weights" in page and "at most 3 new tokens (given on the command line)" in page
    result = json.loads((docs / "fidelity_results.json").read_text())
    assert [(c["method"], c["backend"]) for c in result["configs"]] == [
        ("pdrop", "torch"), ("reroute", "torch"), ("pdrop", "onnxruntime"), ("reroute", "onnxruntime")]
    assert [(a["method"], a["same"], a["n"]) for a in result["agreement"]] == [("pdrop", 2, 2), ("reroute", 2, 2)]
    assert all(len(v["correct"]) == 2 for v in result["correct_per_item"].values())
    assert (docs / "FIDELITY.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Accuracy beside latency" in (docs / "BENCHMARKS.md").read_text()
    for m in result["maps"]:
        assert all((docs / "fidelity" / f).is_file() for f in m["files"].values())
