"""The fidelity run's pieces: vision features shared across eval configs, scripts/fidelity_report.py end to end
(llava-tiny, a few items), and the accuracy section docs/BENCHMARKS.md renders from its json."""

from __future__ import annotations

import json

import pytest

from exporter.samples import synthetic_image


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
