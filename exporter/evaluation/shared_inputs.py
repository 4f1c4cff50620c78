"""What several eval configs compute identically, computed once per run.

Every method x ratio of one model tokenises the same prompts and runs the same vision tower on the same
images: routing starts in the decoder, so the projector's output for an image does not depend on the
method. A run therefore tokenises each prompt once per processor and runs the vision graph once per image
and vision weights (the torch model, or an artifact's vision graph, identified by its sha256: every
artifact exported from one checkpoint carries the same vision graph), and hands the stored features to
the decoder of each config. Features are kept only for vision weights that more than one config uses,
and only up to a memory budget; past it they are recomputed per config, as without the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.inputs import encode, load_image, visual_span_start

FEATURE_BUDGET_BYTES = 1 << 30


class PrecomputedVision:
    """A backend whose ``vision`` returns features computed earlier for this batch's images (in its
    order); every other call (embed, prefill, decode, close) goes to the wrapped backend."""

    def __init__(self, backend, features: np.ndarray):
        self._backend, self._features = backend, features

    def vision(self, pixel_values, image_grid_thw=None) -> np.ndarray:
        return self._features

    def __getattr__(self, name):
        return getattr(self._backend, name)


@dataclass
class SharedInputs:
    shared_vision: set = field(default_factory=set)  # vision keys used by more than one config of the run
    budget_bytes: int = FEATURE_BUDGET_BYTES
    ids: dict = field(default_factory=dict)  # (processor key, item index) -> input_ids [T]
    lengths: dict = field(default_factory=dict)  # processor key -> {item index: prompt tokens before expansion}
    features: dict = field(default_factory=dict)  # (vision key, image path) -> features [N_v, d]
    stored_bytes: int = 0
    vision_calls: int = 0  # images run through a vision graph (for tests and the report)

    @classmethod
    def for_configs(cls, configs) -> "SharedInputs":
        keys = [c.vision_key for c in configs]
        return cls({k for k in keys if keys.count(k) > 1})

    def prompt_lengths(self, processor_key: str, processor, prompts: dict[int, str]) -> dict[int, int]:
        if processor_key not in self.lengths:
            self.lengths[processor_key] = {i: len(processor.tokenizer(p)["input_ids"]) for i, p in prompts.items()}
        return self.lengths[processor_key]

    def batch(self, config, backend, processor, image_token_id: int, num_visual: int, items, prompts):
        """(input_ids [B, T], image features [B, N_v, d], visual_start) for ``items``, computing only
        what no earlier config of the run has computed."""
        pkey, vkey = config.processor_key, config.vision_key
        local: dict = {}
        missing = [it for it in items if (pkey, it.index) not in self.ids or (vkey, it.image) not in self.features]
        if missing:
            images = [load_image(str(it.image)) for it in missing]
            enc = encode(processor, [prompts[it.index] for it in missing], images, image_token_id, num_visual)
            for it, row in zip(missing, enc.input_ids):
                self.ids[(pkey, it.index)] = row
            rows = {}  # image -> first row holding it (the two items of one picture share its features)
            for row, it in enumerate(missing):
                if (vkey, it.image) not in self.features:
                    rows.setdefault(it.image, row)
            if rows:
                feats = backend.vision(enc.pixel_values[list(rows.values())])  # [n, N_v, d]
                self.vision_calls += len(rows)
                for image, f in zip(rows, feats):
                    local[image] = f
                    self._store(vkey, image, f)
        input_ids = np.stack([self.ids[(pkey, it.index)] for it in items])  # [B, T]
        features = np.stack([local.get(it.image, self.features.get((vkey, it.image))) for it in items])
        return input_ids, features, visual_span_start(input_ids, image_token_id, num_visual)

    def _store(self, vkey, image, features: np.ndarray) -> None:
        if vkey not in self.shared_vision or self.stored_bytes + features.nbytes > self.budget_bytes:
            return
        self.features[(vkey, image)] = features
        self.stored_bytes += features.nbytes
