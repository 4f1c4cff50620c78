"""The fidelity run's analysis (scripts/fidelity_report.py): resumable per-config results, ONNX Runtime vs
torch agreement per item, which items get routing maps, and what the paired differences say."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from .data import KINDS
from .markdown import atomic_write
from .report import PAIRS
from .runner import ConfigResult, ItemResult

MAP_RULE = ("at the smallest ratio, on the torch reference: for each pair (routed method, the deletion it "
            "augments), 'recovered' items are those the routed method answers correctly and the deletion does "
            "not; 'not recovered' items are those both answer wrongly. Grounding items come first, then VQA, "
            "each in line order; the first {count} of each group are drawn")


class ResultStore:
    """Finished configs of one run key, one json file each, so an interrupted run can resume (``--resume``)."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = Path(directory), key[:16]
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, label: str) -> Path:
        return self.directory / f"{self.key}-{re.sub(r'[^A-Za-z0-9.=-]+', '_', label)}.json"

    def finished(self, labels: list[str]) -> dict[str, ConfigResult]:
        out = {}
        for label in labels:
            path = self._path(label)
            if path.is_file():
                raw = json.loads(path.read_text())
                raw["items"] = [ItemResult(**item) for item in raw["items"]]
                out[label] = ConfigResult(**raw)
        return out

    def save_extra(self, name: str, value) -> None:
        text = json.dumps(value)
        atomic_write(self.directory / f"{self.key}-{name}.extra.json", lambda tmp: Path(tmp).write_text(text))

    def load_extra(self, name: str):
        return json.loads((self.directory / f"{self.key}-{name}.extra.json").read_text())

    def save(self, result: ConfigResult) -> None:
        text = json.dumps(dataclasses.asdict(result))
        atomic_write(self._path(result.label), lambda tmp: Path(tmp).write_text(text))


def _key(result) -> tuple[str, float]:
    return result.method, round(result.ratio, 4)


def agreement(results: list[ConfigResult], backend: str = "onnxruntime") -> list[dict]:
    """Per ``backend`` config: items whose answer text equals the torch reference's for the same config."""
    reference = {_key(r): r for r in results if r.backend == "torch"}
    rows = []
    for run in (r for r in results if r.backend == backend):
        ref = reference.get(_key(run))
        if ref is None:
            continue
        differ = [a.index for a, b in zip(ref.items, run.items) if a.answer != b.answer]
        rows.append({"method": run.method, "ratio": run.ratio, "n": len(run.items),
                     "same": len(run.items) - len(differ), "differing_lines": differ})
    return rows


def map_choices(results: list[ConfigResult], ratio: float, count: int) -> list[dict]:
    """Items for routing maps, by :data:`MAP_RULE`."""
    runs = {_key(r): r for r in results if r.backend == "torch"}
    chosen = []
    for routed, deletion in PAIRS:
        a, b = runs.get((routed, round(ratio, 4))), runs.get((deletion, round(ratio, 4)))
        if a is None or b is None:
            continue
        groups = {"recovered": [(x, y) for x, y in zip(a.items, b.items) if x.correct and not y.correct],
                  "not recovered": [(x, y) for x, y in zip(a.items, b.items) if not x.correct and not y.correct]}
        for group, pairs in groups.items():
            pairs.sort(key=lambda p: (p[0].kind != "grounding", p[0].index))
            for x, y in pairs[:count]:
                chosen.append({"group": group, "routed": routed, "deletion": deletion, "ratio": a.ratio,
                               "line": x.index, "kind": x.kind, "answers": {routed: x.answer, deletion: y.answer},
                               "iou": {routed: x.iou, deletion: y.iou}})
    return chosen


def pair_verdicts(report: dict) -> list[str]:
    """One sentence per pair, ratio and backend (all items): the difference and whether its 95% interval
    excludes zero. Generated from the numbers, whatever they are."""
    lines = []
    for p in report["pairs"]:
        if p["kind"] != "all":
            continue
        low, high = p["ci"]
        if low > 0:
            verdict = f"{p['method_a']} is more accurate than {p['method_b']} (the interval excludes 0)"
        elif high < 0:
            verdict = f"{p['method_a']} is less accurate than {p['method_b']} (the interval excludes 0)"
        else:
            verdict = "no difference this test can resolve (the interval contains 0)"
        lines.append(f"ratio {p['ratio']:.4f}, {p['backend']}: {p['method_a']} - {p['method_b']} = "
                     f"{100 * p['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]: {verdict}")
    return lines


def compact_items(results: list[ConfigResult]) -> dict:
    """Per config, the item lines and a 0/1 string of correctness in that order (small enough for git,
    enough to recompute every accuracy and paired difference)."""
    out = {}
    for r in results:
        out[r.label] = {"lines": [it.index for it in r.items],
                        "correct": "".join("1" if it.correct else "0" for it in r.items)}
    return out


def unrouted_accuracy(report: dict, backend: str = "torch") -> dict:
    """The unrouted model's accuracy per kind (the issue's >= 90% bar), or {} if it did not run."""
    row = next((c for c in report["configs"] if c["method"] == "none" and c["backend"] == backend), None)
    if row is None:
        return {}
    return {k: row["accuracy"][k] for k in ("all", *KINDS) if k in row["accuracy"]}
