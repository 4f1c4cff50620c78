"""`reroute eval` end to end on llava-tiny (random weights: counts, formats and backend agreement, not accuracy)."""

from __future__ import annotations

import json

import pytest

from exporter.cli import main
from exporter.samples import synthetic_image

pytest.importorskip("onnxruntime")

LIMIT, TOKENS = 2, 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    (root / "img").mkdir()
    for i in range(2):
        synthetic_image(i, size=(336, 336)).save(root / "img" / f"{i}.png")
    lines = [
        json.dumps({"image": "img/0.png", "question": "Where is the red ball?", "kind": "grounding",
                    "bbox": [0.1, 0.1, 0.4, 0.4]}),
        "{broken",
        json.dumps({"image": "img/7.png", "question": "What colour?", "answer": "red", "kind": "vqa"}),
        json.dumps({"image": "img/1.png", "question": "What colour is the disc?", "answer": "red", "kind": "vqa"}),
        json.dumps({"image": "img/1.png", "question": "Is there a disc?", "answer": "yes", "kind": "vqa"}),
    ]
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def answers(report):
    return [(item["line"], item["answer"]) for item in report["configs"][0]["items"]]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from exporter.onnx_export import export_artifact

    root = tmp_path_factory.mktemp("eval-artifacts")
    return {m: str(export_artifact("llava-tiny", m, 1 / 9, str(root / m), dtype="fp32", parity_samples=0,
                                   quiet=True)[0]) for m in ("pdrop", "reroute")}


@pytest.mark.parametrize("method", ["pdrop", "reroute"])
def test_artifact_answers_match_torch_reference(capsys, data_dir, artifacts, method, tmp_path):
    common = ["--data", str(data_dir), "--limit", str(LIMIT), "--max-new-tokens", str(TOKENS), "--json"]
    out_md = tmp_path / "eval.md"
    code, out, err = run(capsys, "eval", "--model", "llava-tiny", "--methods", method, "--ratios", "1/9",
                         "--report", str(out_md), *common)
    assert code == 0, err
    torch_report = json.loads(out)
    assert "[1/1]" in err and f"{LIMIT}/{LIMIT} items" in err  # progress on stderr
    assert (torch_report["items"], torch_report["malformed_lines"], torch_report["missing_images"]) == (LIMIT, 1, 1)
    config = torch_report["configs"][0]
    assert (config["method"], config["backend"]) == (method, "torch")
    assert config["accuracy"]["all"]["n"] == LIMIT and len(config["items"]) == LIMIT
    assert 0 < config["flops_ratio"] < 1 / 9 and config["kv_bytes"] < config["kv_bytes_full"]
    assert out_md.is_file() and out_md.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| method |" in out_md.read_text()

    code, out, err = run(capsys, "eval", "--artifact", artifacts[method], *common)
    assert code == 0, err
    ort_report = json.loads(out)
    assert ort_report["configs"][0]["backend"] == "onnxruntime"
    assert ort_report["configs"][0]["method"] == method
    assert answers(ort_report) == answers(torch_report)


def test_text_table(capsys, data_dir):
    code, out, _ = run(capsys, "eval", "--model", "llava-tiny", "--methods", "none", "--data", str(data_dir),
                       "--limit", "1", "--max-new-tokens", "2", "--quiet")
    assert code == 0
    # --limit stops reading at the first usable item: the bad lines after it are not reached
    assert "1 items (0 vqa, 1 grounding); 0 malformed lines, 0 missing images skipped" in out
    assert "none" in out and "1.000x" in out


@pytest.mark.parametrize("argv,needle", [
    (["--model", "llava-tiny", "--backend", "onnxruntime"], "--backend applies to --artifact"),
    (["--model", "llava-tiny", "--methods", "magic"], "unknown method"),
    (["--artifact", "/nonexistent"], "artifact folder not found"),
    (["--artifact", "/nonexistent", "--ratios", "1/9"], "--methods and --ratios apply to --model"),
    (["--model", "llava-tiny", "--limit", "0"], "--limit must be >= 1"),
])
def test_bad_arguments_one_line_exit_2(capsys, data_dir, argv, needle):
    code, _, err = run(capsys, "eval", "--data", str(data_dir), *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_not_jsonl_exit_2(capsys, tmp_path):
    (tmp_path / "data.jsonl").write_text('[\n  {"image": "a.png", "question": "q", "kind": "vqa"}\n]\n')  # a JSON array
    code, _, err = run(capsys, "eval", "--model", "llava-tiny", "--data", str(tmp_path))
    assert code == 2 and "not JSONL" in err and len(err.strip().splitlines()) == 1
