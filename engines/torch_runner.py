"""The PyTorch reference backend: HF vision tower + routed decoder from graphs/."""

from __future__ import annotations

import numpy as np
import torch

from graphs.llava import MergeEmbedding, VisionEncoder
from graphs.routed import RoutedDecoder

from .base import Prefill


class TorchBackend:
    name = "torch"

    def __init__(self, loaded, schedule, dtype: torch.dtype = torch.float32):
        """loaded: exporter.models.LoadedModel; schedule: graphs.schedule.Schedule."""
        self.dtype = dtype
        hf = loaded.hf_model.to(dtype)
        self.vision_encoder = VisionEncoder(hf).eval()
        self.embedding = MergeEmbedding(hf.get_input_embeddings(), loaded.image_token_id).eval()
        self.decoder = RoutedDecoder.from_hf(hf, loaded.decoder_config, schedule)

    @torch.inference_mode()
    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        out = self.vision_encoder(torch.from_numpy(pixel_values).to(self.dtype))
        return out.numpy()

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        return self.embedding(torch.from_numpy(input_ids), torch.from_numpy(image_features)).numpy()

    @torch.inference_mode()
    def prefill(self, inputs_embeds: np.ndarray, visual_start: int) -> Prefill:
        out = self.decoder.prefill(torch.from_numpy(inputs_embeds), visual_start)
        return Prefill(out.logits.float().numpy(), out.cache, [s.numpy() for s in out.selections])

    @torch.inference_mode()
    def decode(self, inputs_embeds, positions, cache):
        logits, cache = self.decoder.decode_step(torch.from_numpy(inputs_embeds), torch.from_numpy(positions), cache)
        return logits.float().numpy(), cache

    def cache_lengths(self, cache) -> list[int]:
        return [k.shape[2] for k, _ in cache]

    def cache_arrays(self, cache) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(k.numpy(), v.numpy()) for k, v in cache]
