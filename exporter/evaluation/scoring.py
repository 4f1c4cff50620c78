"""Score one answer: normalised exact match (VQA) or IoU >= 0.5 of a parsed box (grounding). Pure functions."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from .data import Item, valid_box

IOU_THRESHOLD = 0.5
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
# a number such as 0.25, .25, 1, 1.0 (no sign: normalised coordinates are never negative)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SEP = r"\s*[,;\s]\s*"
_BOX = re.compile(rf"({_NUMBER}){_SEP}({_NUMBER}){_SEP}({_NUMBER}){_SEP}({_NUMBER})")


@dataclass(frozen=True)
class Score:
    correct: bool
    unparseable: bool = False  # grounding: no box could be read from the answer
    iou: float | None = None  # grounding only


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed ("The Red." -> "red")."""
    words = text.lower().translate(_PUNCTUATION).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first four numbers in a row, as LLaVA-1.5 writes a REC box: ``[x0, y0, x1, y1]`` in [0, 1].

    Brackets, commas or spaces between the numbers are all accepted; four numbers that are not a
    valid normalised box (outside [0, 1], or x1 <= x0, y1 <= y0) make the answer unparseable.
    """
    match = _BOX.search(text)
    if match is None:
        return None
    return valid_box([float(g) for g in match.groups()])


def iou(a, b) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_answer(item: Item, answer: str) -> Score:
    if item.kind == "grounding":
        box = parse_box(answer)
        if box is None:
            return Score(False, unparseable=True)
        overlap = iou(box, item.bbox)
        return Score(overlap >= IOU_THRESHOLD, iou=overlap)
    return Score(normalize_answer(answer) == normalize_answer(item.answer))
