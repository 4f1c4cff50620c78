"""scripts/make_grounding_data.py: deterministic, and its boxes hold the shapes' rendered pixels."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from exporter.evaluation.data import load_dataset
from exporter.evaluation.scoring import iou, parse_box, score_answer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_grounding_data.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("make_grounding_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_splits_are_deterministic_and_distinct(gen, tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        gen.main(["--out", str(out), "--train", "3", "--val", "0", "--test", "3"])
    for split in ("train", "test"):
        a, b = tmp_path / "a" / split, tmp_path / "b" / split
        assert (a / "data.jsonl").read_bytes() == (b / "data.jsonl").read_bytes()
        for png in sorted((a / "images").iterdir()):
            assert png.read_bytes() == (b / "images" / png.name).read_bytes()
    train = (tmp_path / "a" / "train" / "data.jsonl").read_text()
    assert train != (tmp_path / "a" / "test" / "data.jsonl").read_text()
    data = load_dataset(tmp_path / "a" / "test")
    assert data.counts() == {"items": 6, "items_vqa": 3, "items_grounding": 3, "malformed_lines": 0,
                             "missing_images": 0}
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize("index", range(6))
def test_boxes_hold_the_rendered_shapes(gen, index):
    image, shapes, _ = gen.scene(0, "test", index)
    pixels = np.asarray(image)
    assert image.size == (gen.SIZE, gen.SIZE) and 3 <= len(shapes) <= 5
    assert len({(s.colour, s.shape) for s in shapes}) == len(shapes)  # referring expressions are unique
    sizes = {s.box[2] - s.box[0] for s in shapes}
    assert len(sizes) > 1  # several sizes
    for s in shapes:
        painted = np.all(pixels == gen.COLOURS[s.colour], axis=-1)
        x0, y0, x1, y1 = s.box
        inside = painted[y0:y1, x0:x1]
        # the box is tight: every edge row and column of it holds a pixel of the shape's colour
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert inside.mean() >= 0.45  # a triangle fills half its box
        region = np.zeros_like(painted)
        region[y0:y1, x0:x1] = True
        assert (gen.painted_mask(s) == (painted & region)).all()  # what the patch targets are computed from
        # the shape's colour appears nowhere outside the boxes of shapes with that colour (clutter is muted)
        same = np.zeros_like(painted)
        for o in shapes:
            if o.colour == s.colour:
                same[o.box[1]:o.box[3], o.box[0]:o.box[2]] = True
        assert not (painted & ~same).any()
    for a in shapes:  # no two shapes overlap
        for b in shapes:
            if a is not b:
                assert iou(tuple(v / gen.SIZE for v in a.box), tuple(v / gen.SIZE for v in b.box)) == 0


def test_items_answer_their_questions(gen, tmp_path):
    gen.main(["--out", str(tmp_path), "--train", "0", "--val", "0", "--test", "8"])
    data = load_dataset(tmp_path / "test")
    lines = [json.loads(line) for line in (tmp_path / "test" / "data.jsonl").read_text().splitlines()]
    for item, line in zip(data.items, lines):
        assert score_answer(item, line["answer"]).correct  # the reference answer scores as right
        _, shapes, _ = gen.scene(0, "test", int(Path(line["image"]).stem))
        if item.kind == "grounding":
            # two decimals move each side <= 0.005 of a box >= 40/336 wide: IoU >= 0.9^2
            assert iou(parse_box(line["answer"]), item.bbox) > 0.75
            named = [s for s in shapes if f"the {s.colour} {s.shape}." in item.question]
            assert len(named) == 1 and np.allclose(np.array(named[0].box) / gen.SIZE, item.bbox, atol=1e-4)
        else:
            relation, anchor, target = next(
                (r, a, t) for r, a, t in gen.unique_relations(shapes)
                if item.question.endswith(f"{r} the {a.colour} {a.shape}?"))
            assert line["answer"] in (target.colour, target.shape)
