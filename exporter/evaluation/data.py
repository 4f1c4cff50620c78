"""Read an eval dataset: a folder with ``data.jsonl``; bad lines and missing images are counted, not fatal."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from engines.errors import RerouteError

KINDS = ("vqa", "grounding")
DATA_FILE = "data.jsonl"


@dataclass(frozen=True)
class Item:
    index: int  # line number in data.jsonl (1-based): the item's id in reports
    image: Path
    question: str
    answer: str
    kind: str
    bbox: tuple[float, float, float, float] | None = None


@dataclass
class Dataset:
    root: Path
    items: list[Item]
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, why)
    missing_images: list[tuple[int, str]] = field(default_factory=list)  # (line, path): absent or unreadable

    def counts(self) -> dict:
        kinds = {k: sum(1 for it in self.items if it.kind == k) for k in KINDS}
        return {"items": len(self.items), **{f"items_{k}": n for k, n in kinds.items()},
                "malformed_lines": len(self.malformed), "missing_images": len(self.missing_images)}


class LineError(ValueError):
    """One line of data.jsonl cannot be used (counted as malformed)."""


def valid_box(value) -> tuple[float, float, float, float] | None:
    """A normalised [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        return None
    return x0, y0, x1, y1


def parse_line(record, root: Path, index: int) -> Item:
    """An :class:`Item` from one decoded JSON line; raises :class:`LineError` saying what is wrong."""
    if not isinstance(record, dict):
        raise LineError("not a JSON object")
    kind = record.get("kind")
    if kind not in KINDS:
        raise LineError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in ("image", "question") + (("answer",) if kind == "vqa" else ()):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise LineError(f"{key!r} must be a non-empty string")
    bbox = None
    if kind == "grounding":
        bbox = valid_box(record.get("bbox"))
        if bbox is None:
            raise LineError("grounding needs 'bbox': [x0, y0, x1, y1] normalised to [0, 1] with x0 < x1, y0 < y1")
    return Item(index, root / record["image"], record["question"], record.get("answer") or "", kind, bbox)


def readable_image(path: Path) -> bool:
    """True when ``path`` exists and decodes as an image (checked up front so a run never stops half-way)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _data_file(path: Path) -> Path:
    if path.is_dir():
        path = path / DATA_FILE
    if not path.is_file():
        raise RerouteError(f"dataset not found: {path} (give a folder with {DATA_FILE}, or the file itself)")
    return path


def _refuse_json_document(file: Path, lines: list[str]) -> None:
    """A JSON array, or one object spread over lines, parses as a whole: JSON, not JSONL."""
    try:
        whole = json.loads("\n".join(lines))
    except json.JSONDecodeError:
        return
    if not isinstance(whole, dict) or sum(1 for line in lines if line.strip()) > 1:
        raise RerouteError(f"{file} is not JSONL: it is one JSON {type(whole).__name__} (write one object per line)")


def load_dataset(path: str | Path, limit: int | None = None) -> Dataset:
    """Items of ``path`` (a folder holding data.jsonl, or the file); ``limit`` keeps the first N good items."""
    file = _data_file(Path(path))
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RerouteError(f"{file} is not JSONL (not UTF-8 text)") from None
    _refuse_json_document(file, lines)
    data = Dataset(file.parent, [])
    decoded = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if limit is not None and len(data.items) >= limit:
            break
        try:
            record = json.loads(line)
            decoded += isinstance(record, dict)
            item = parse_line(record, file.parent, number)
        except json.JSONDecodeError:
            data.malformed.append((number, "not valid JSON"))
            continue
        except LineError as exc:
            data.malformed.append((number, str(exc)))
            continue
        if not readable_image(item.image):
            data.missing_images.append((number, str(item.image)))
            continue
        data.items.append(item)
    if decoded == 0:
        # not one line decodes: a JSON array, CSV or other file, not a dataset with a few bad lines
        raise RerouteError(f"{file} is not JSONL: no line is a JSON object (expected one object per line)")
    return data
