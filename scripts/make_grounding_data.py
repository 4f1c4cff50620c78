"""Deterministic synthetic grounding / VQA data for ``reroute eval`` (issue 14).

Each 336x336 picture holds 3-5 flat shapes of clearly different colours and sizes, none overlapping,
over a cluttered background of muted strokes and dots. Every (colour, shape) pair occurs at most once
per picture, so "the red triangle" always names one object. Two items per picture:

- ``grounding``: LLaVA-1.5's REC prompt for one object; the answer is its box ``[x0, y0, x1, y1]``
  normalised to [0, 1] with two decimals (``bbox`` keeps four decimals of the exact pixel box);
- ``vqa``: the colour, or the shape, of the one object that lies entirely left of / right of /
  above / below a named object (only relations that pick out exactly one object are asked).

Questions use fixed templates so a small model can learn the task. Splits are seeded separately
(train, val, test); item ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``,
so any split can be regenerated alone and bit-identically.

    python scripts/make_grounding_data.py --out data/grounding   # 20000 / 500 / 500 pictures, 2 items each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 336
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 70, 225), "yellow": (240, 215, 20),
           "purple": (150, 40, 190)}
SHAPES = ("circle", "square", "triangle", "diamond")
SPLITS = {"train": 0, "val": 1, "test": 2}
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: the {colour} {shape}."
RELATIONS = {  # name -> is ``other`` entirely on that side of ``anchor``?
    "left of": lambda o, a: o.box[2] <= a.box[0],
    "right of": lambda o, a: o.box[0] >= a.box[2],
    "above": lambda o, a: o.box[3] <= a.box[1],
    "below": lambda o, a: o.box[1] >= a.box[3],
}
GAP = 8  # px between the boxes of two shapes


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # pixel box of the drawn pixels, x1/y1 exclusive
    square: tuple[int, int, int]  # (x, y, size) the shape was drawn in

    def normalised(self, digits: int) -> list[float]:
        return [round(v / SIZE, digits) for v in self.box]


def _outline(shape: str, x: int, y: int, size: int) -> list[tuple[int, int]] | None:
    """Polygon corners of a shape in the square [x, x + size) x [y, y + size); None for the circle."""
    right, bottom, mid_x, mid_y = x + size - 1, y + size - 1, x + (size - 1) // 2, y + (size - 1) // 2
    if shape == "triangle":
        return [(mid_x, y), (right, bottom), (x, bottom)]
    if shape == "diamond":
        return [(mid_x, y), (right, mid_y), (mid_x, bottom), (x, mid_y)]
    return None


def draw_shape(draw, shape: str, x: int, y: int, size: int, fill) -> None:
    corners = _outline(shape, x, y, size)
    if shape == "circle":
        draw.ellipse([x, y, x + size - 1, y + size - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=fill)
    else:
        draw.polygon(corners, fill=fill)


def shape_mask(shape: str, x: int, y: int, size: int) -> np.ndarray:
    """[SIZE, SIZE] bool: the pixels ``draw_shape`` paints (the box is measured from these, not assumed)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (SIZE, SIZE), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, x, y, size, 1)
    return np.asarray(canvas, dtype=bool)


def painted_mask(shape: Shape) -> np.ndarray:
    """[SIZE, SIZE] bool: the pixels of the picture this shape paints (shapes never overlap)."""
    return shape_mask(shape.shape, *shape.square)


def _background(rng, draw) -> None:
    """Muted clutter: low-saturation strokes, rectangles and dots that never reach the shapes' colours."""
    for _ in range(int(rng.integers(60, 120))):
        grey = int(rng.integers(70, 190))
        tint = rng.integers(-18, 19, 3)
        fill = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
        x, y = (int(v) for v in rng.integers(0, SIZE, 2))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            dx, dy = (int(v) for v in rng.integers(-60, 61, 2))
            draw.line([x, y, x + dx, y + dy], fill=fill, width=int(rng.integers(1, 4)))
        elif kind == 1:
            w, h = (int(v) for v in rng.integers(4, 30, 2))
            draw.rectangle([x, y, x + w, y + h], outline=fill)
        else:
            r = int(rng.integers(1, 4))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _place(rng, count: int) -> list[tuple[int, int, int]] | None:
    """Non-overlapping squares (x, y, size) of varied sizes, by rejection sampling; None when crowded."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(200):
        size = int(rng.integers(40, 91))  # >= ~3 patches a side: a shape the 14-px patches can resolve
        x, y = (int(v) for v in rng.integers(4, SIZE - size - 4, 2))
        if all(x + size + GAP <= px or px + ps + GAP <= x or y + size + GAP <= py or py + ps + GAP <= y
               for px, py, ps in placed):
            placed.append((x, y, size))
            if len(placed) == count:
                return placed
    return None


def render_scene(rng):
    """(PIL image, shapes): clutter, then 3-5 shapes with distinct (colour, shape) pairs."""
    from PIL import Image, ImageDraw

    count = int(rng.integers(3, 6))
    while (squares := _place(rng, count)) is None:
        count -= 1
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    base = tuple(int(v) for v in rng.integers(100, 160, 3))
    image = Image.new("RGB", (SIZE, SIZE), base)
    draw = ImageDraw.Draw(image)
    _background(rng, draw)
    shapes = []
    for (x, y, size), pick in zip(squares, chosen):
        colour, kind = pairs[int(pick)]
        draw_shape(draw, kind, x, y, size, COLOURS[colour])
        ys, xs = np.nonzero(shape_mask(kind, x, y, size))
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        shapes.append(Shape(colour, kind, box, (x, y, size)))
    return image, shapes


def unique_relations(shapes: list[Shape]) -> list[tuple[str, Shape, Shape]]:
    """(relation, anchor, target) where the target is the only shape in that relation to the anchor."""
    out = []
    for anchor in shapes:
        for name, holds in RELATIONS.items():
            hits = [o for o in shapes if o is not anchor and holds(o, anchor)]
            if len(hits) == 1:
                out.append((name, anchor, hits[0]))
    return out


def make_items(rng, image_path: str, shapes: list[Shape]) -> list[dict]:
    target = shapes[int(rng.integers(len(shapes)))]
    box = target.normalised(2)
    items = [{"image": image_path, "kind": "grounding", "bbox": target.normalised(4),
              "question": REC_PROMPT.format(colour=target.colour, shape=target.shape),
              "answer": "[" + ", ".join(f"{v:.2f}" for v in box) + "]"}]
    relations = unique_relations(shapes)
    name, anchor, other = relations[int(rng.integers(len(relations)))]
    ask_colour = bool(rng.integers(2))
    question = (f"What colour is the shape {name} the {anchor.colour} {anchor.shape}?" if ask_colour
                else f"What shape is {name} the {anchor.colour} {anchor.shape}?")
    items.append({"image": image_path, "kind": "vqa", "question": question,
                  "answer": other.colour if ask_colour else other.shape})
    return items


def scene(seed: int, split: str, index: int):
    """(image, shapes, rng after drawing) of item ``index`` of ``split``; the same on every run."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    while True:  # redraw (same generator) until some relation names one object: every picture gets both kinds
        image, shapes = render_scene(rng)
        if unique_relations(shapes):
            return image, shapes, rng


def write_split(out: Path, split: str, count: int, seed: int) -> dict:
    """Write ``out/split`` (data.jsonl + images/) through a temp folder renamed into place."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=out))
    try:
        (tmp / "images").mkdir()
        lines = []
        for i in range(count):
            image, shapes, rng = scene(seed, split, i)
            rel = f"images/{i:05d}.png"
            image.save(tmp / rel)
            lines += [json.dumps(item) for item in make_items(rng, rel, shapes)]
        (tmp / "data.jsonl").write_text("\n".join(lines) + "\n")
        os.chmod(tmp, 0o755)
        target = out / split
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kinds = [json.loads(line)["kind"] for line in lines]
    return {"split": split, "images": count, "grounding": kinds.count("grounding"), "vqa": kinds.count("vqa")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder; one subfolder per split")
    p.add_argument("--seed", type=int, default=0)
    for split, default in (("train", 20000), ("val", 500), ("test", 500)):
        p.add_argument(f"--{split}", type=int, default=default, help=f"pictures in {split} (default {default})")
    args = p.parse_args(argv)
    for split in SPLITS:
        count = getattr(args, split)
        if count < 0:
            p.error(f"--{split} must be >= 0")
        if count:
            print(json.dumps(write_split(Path(args.out), split, count, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
