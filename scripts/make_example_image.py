"""Regenerate assets/example.png, the synthetic picture the README commands use."""

from pathlib import Path

from exporter.samples import synthetic_image

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "assets" / "example.png"
    synthetic_image(2024, size=(400, 300)).save(out)
    print(out)
