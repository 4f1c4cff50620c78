"""Regenerate the pictures the README commands use.

- ``assets/example.png``: a synthetic picture for the random-weight presets;
- ``assets/grounding_example.png``: picture 0 of the grounding test split (``make_grounding_data.py``,
  seed 0), the one the README's main job asks ``llava-grounding`` about; its objects and boxes are printed.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import make_grounding_data as grounding  # noqa: E402

from exporter.samples import synthetic_image  # noqa: E402

GROUNDING_EXAMPLE = ("test", 0)  # split and index of the grounding example picture

if __name__ == "__main__":
    out = ROOT / "assets" / "example.png"
    synthetic_image(2024, size=(400, 300)).save(out)
    print(out)
    image, shapes, _ = grounding.scene(0, *GROUNDING_EXAMPLE)
    out = ROOT / "assets" / "grounding_example.png"
    image.save(out)
    print(out)
    for s in shapes:
        print(f"  the {s.colour} {s.shape}: [" + ", ".join(f"{v:.2f}" for v in s.normalised(2)) + "]")
