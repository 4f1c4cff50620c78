"""The PyTorch reference backend: HF vision tower + routed decoder from graphs/, on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from graphs.routed import RoutedDecoder

from .base import Prefill


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Host copy at the numpy boundary; bf16 has no numpy dtype, so it leaves as fp32."""
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()


class TorchBackend:
    name = "torch"

    def __init__(self, loaded, schedule, dtype: torch.dtype = torch.float32, device="cpu"):
        """loaded: exporter.models.LoadedModel (moved to ``device``/``dtype`` in place); schedule: graphs.schedule.Schedule."""
        self.dtype = dtype
        self.device = torch.device(device)
        hf = loaded.hf_model.to(device=self.device, dtype=dtype)
        family = loaded.family
        self.vision_encoder = family.vision_encoder(hf).eval()
        self.embedding = family.merge_embedding(hf).eval()
        # from_hf rebuilds the rotary buffer on the default device: move the whole decoder
        self.decoder = RoutedDecoder.from_hf(hf, loaded.decoder_config, schedule).to(self.device)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        """Input on the backend's device; float inputs in the backend's dtype (fp32 arrives for bf16)."""
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    @torch.inference_mode()
    def vision(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray | None = None) -> np.ndarray:
        """-> image features [B, N_v, d]; ``image_grid_thw`` [B, 3] for dynamic-resolution families."""
        extra = () if image_grid_thw is None else (torch.from_numpy(image_grid_thw).to(self.device),)
        return to_numpy(self.vision_encoder(self._tensor(pixel_values), *extra))

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        return to_numpy(self.embedding(self._tensor(input_ids), self._tensor(image_features)))

    @torch.inference_mode()
    def prefill(self, inputs_embeds: np.ndarray, visual_start: int, position_ids: np.ndarray | None = None,
                num_visual: int | None = None) -> Prefill:
        """position_ids: [3, B, T] M-RoPE ids (default 0..T-1); num_visual: this batch's N_v when it varies
        per image (the schedule's k_s are recomputed for it, SPEC section 9)."""
        schedule = None if num_visual is None else self.decoder.schedule.for_num_visual(num_visual)
        positions = None if position_ids is None else self._tensor(position_ids)
        out = self.decoder.prefill(self._tensor(inputs_embeds), visual_start, positions, schedule)
        return Prefill(to_numpy(out.logits.float()), out.cache, [to_numpy(s) for s in out.selections])

    @torch.inference_mode()
    def decode(self, inputs_embeds, positions, cache):
        logits, cache = self.decoder.decode_step(self._tensor(inputs_embeds), self._tensor(positions), cache)
        return to_numpy(logits.float()), cache

    def cache_lengths(self, cache) -> list[int]:
        return [k.shape[2] for k, _ in cache]

    def cache_arrays(self, cache) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(to_numpy(k), to_numpy(v)) for k, v in cache]
