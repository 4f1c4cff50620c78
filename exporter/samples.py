"""Deterministic synthetic pictures and prompts for tests, parity runs and benchmarks (no downloads)."""

from __future__ import annotations

import numpy as np

PROMPTS = [
    "USER: <image>\nWhat is shown in this picture? ASSISTANT:",
    "USER: <image>\nWhere is the red ball? ASSISTANT:",
    "USER: <image>\nCount the dogs. ASSISTANT:",
    "USER: <image>\nDescribe the left part. ASSISTANT:",
    "USER: <image>\nIs there any text? ASSISTANT:",
]


def synthetic_image(seed: int, size: tuple[int, int] = (320, 280)):
    """Smooth colour fields plus a few bright discs, so attention (and routing) has structure."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = 127 + 60 * np.sin(xx / rng.uniform(8, 40) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(8, 40))
    for _ in range(4):
        cx, cy, r = rng.randint(0, w), rng.randint(0, h), rng.randint(10, 50)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.randint(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def sample(i: int):
    """(prompt, image) pair number i; prompts cycle, images differ."""
    return PROMPTS[i % len(PROMPTS)], synthetic_image(i, size=(300 + 10 * (i % 7), 260 + 7 * (i % 5)))
