"""The four-graph interface every backend implements, numpy in and out.

A backend runs: vision (pixel_values -> image_features), embed (input_ids,
image_features -> inputs_embeds), routed prefill, and one decode step over the
per-layer compact KV cache. The generation loop is written once against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Prefill:
    logits: np.ndarray  # [B, vocab] at the last prompt position
    cache: Any  # backend-specific per-layer KV cache
    selections: list[np.ndarray] = field(default_factory=list)  # per decision layer [B, k_s]


class GraphBackend(Protocol):
    name: str

    def vision(self, pixel_values: np.ndarray) -> np.ndarray: ...

    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray: ...

    def prefill(self, inputs_embeds: np.ndarray, visual_start: int) -> Prefill: ...

    def decode(self, inputs_embeds: np.ndarray, positions: np.ndarray, cache: Any) -> tuple[np.ndarray, Any]: ...

    def cache_lengths(self, cache: Any) -> list[int]: ...
