"""The PyTorch reference backend: the family's vision tower + routed decoder from graphs/."""

from __future__ import annotations

import numpy as np
import torch

from graphs.routed import RoutedDecoder

from .base import Prefill


class TorchBackend:
    name = "torch"

    def __init__(self, loaded, schedule, dtype: torch.dtype = torch.float32):
        """loaded: exporter.models.LoadedModel; schedule: graphs.schedule.Schedule."""
        self.dtype = dtype
        hf = loaded.hf_model.to(dtype)
        family = loaded.family
        self.vision_encoder = family.vision_encoder(hf).eval()
        self.embedding = family.merge_embedding(hf).eval()
        self.decoder = RoutedDecoder.from_hf(hf, loaded.decoder_config, schedule)

    @torch.inference_mode()
    def vision(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray | None = None) -> np.ndarray:
        """-> image features [B, N_v, d]; ``image_grid_thw`` [B, 3] for dynamic-resolution families."""
        extra = () if image_grid_thw is None else (torch.from_numpy(image_grid_thw),)
        out = self.vision_encoder(torch.from_numpy(pixel_values).to(self.dtype), *extra)
        return out.numpy()

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        return self.embedding(torch.from_numpy(input_ids), torch.from_numpy(image_features)).numpy()

    @torch.inference_mode()
    def prefill(self, inputs_embeds: np.ndarray, visual_start: int, position_ids: np.ndarray | None = None,
                num_visual: int | None = None) -> Prefill:
        """position_ids: [3, B, T] M-RoPE ids (default 0..T-1); num_visual: this batch's N_v when it varies
        per image (the schedule's k_s are recomputed for it, SPEC section 9)."""
        schedule = None if num_visual is None else self.decoder.schedule.for_num_visual(num_visual)
        positions = None if position_ids is None else torch.from_numpy(position_ids)
        out = self.decoder.prefill(torch.from_numpy(inputs_embeds), visual_start, positions, schedule)
        return Prefill(out.logits.float().numpy(), out.cache, [s.numpy() for s in out.selections])

    @torch.inference_mode()
    def decode(self, inputs_embeds, positions, cache):
        logits, cache = self.decoder.decode_step(torch.from_numpy(inputs_embeds), torch.from_numpy(positions), cache)
        return logits.float().numpy(), cache

    def cache_lengths(self, cache) -> list[int]:
        return [k.shape[2] for k, _ in cache]

    def cache_arrays(self, cache) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(k.numpy(), v.numpy()) for k, v in cache]
