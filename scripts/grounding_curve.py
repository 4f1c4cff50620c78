"""Print the learning curve of a scripts/train_grounding.py run as Markdown tables (for docs/GROUNDING.md).

    python scripts/grounding_curve.py assets/llava-grounding/train_log.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VISION = ("step", "loss", "box_within_1", "colour_acc", "shape_acc", "seconds", "load")
DECODER = ("phase", "step", "loss", "focus", "val_loss", "val_token_acc", "val_grounding_acc", "val_vqa_acc", "seconds",
           "load")


def table(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def curve(log: Path, vision_every: int = 200) -> str:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    vision = [r for r in records if r["phase"] == "vision"]
    vision = [r for i, r in enumerate(vision) if r["step"] % vision_every == 0 or i == len(vision) - 1]
    # the shallow decoder's and the grown 32-layer decoder's evaluations, the growth's own check between
    decoder = [r for r in records if r["phase"] in ("shallow", "grown", "decoder") and "val_loss" in r]
    start = next(r for r in records if r["phase"] == "start")
    end = records[-1]
    args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in start["args"].items() if k != "out")
    return "\n\n".join([
        f"Run: `{args}`; {end['seconds']:.0f} s in all, last phase `{end['phase']}`.",
        "Vision phase (training batch; accuracies on the objects' patches):\n\n" + table(vision, VISION),
        "Decoder phases (evaluations; `shallow`: the first layers alone, `grown`: right after the growth to 32 "
        "layers, `decoder`: all 32 layers training; generation accuracy on the val split's first items):\n\n"
        + table(decoder, DECODER),
    ])


if __name__ == "__main__":
    print(curve(Path(sys.argv[1])))
