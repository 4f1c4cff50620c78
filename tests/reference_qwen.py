"""The plain masked reference (reference_impl.py) for Qwen2.5-VL: HF's image merge and 3-D M-RoPE positions.

M-RoPE is written out per rotary channel: channel j of ``head_dim / 2`` belongs to
section i of ``mrope_section`` and turns by ``position[i % 3] * inv_freq[j]``.
Nothing here is shared with graphs/.
"""

from __future__ import annotations

import torch

from .reference_impl import ReferenceLlava


class ReferenceQwen(ReferenceLlava):
    def __init__(self, hf_model):
        super().__init__(hf_model)
        self.section = list(hf_model.config.text_config.rope_parameters["mrope_section"])

    @torch.no_grad()
    def embeddings(self, input_ids, pixel_values, image_grid_thw):
        """HF's own embedding + image merge: [B, T, d]."""
        emb = self.hf.get_input_embeddings()(input_ids)
        feats = self.hf.model.get_image_features(pixel_values=pixel_values, image_grid_thw=image_grid_thw)
        feats = torch.cat(list(feats.pooler_output), 0)
        mask = (input_ids == self.hf.config.image_token_id)[..., None].expand_as(emb)
        return emb.masked_scatter(mask, feats)

    @torch.no_grad()
    def positions(self, input_ids, image_grid_thw):
        """[3, B, T] from the HF model's get_rope_index (image tokens typed 1, text 0)."""
        types = (input_ids == self.hf.config.image_token_id).long()
        positions, _ = self.hf.model.get_rope_index(input_ids, types, image_grid_thw)
        return positions

    def _rope(self, x, positions):
        """x: [heads, n, hd], positions: [3, n] -> rotated x."""
        hd = x.shape[-1]
        inv = 1.0 / self.theta ** (torch.arange(0, hd, 2).float() / hd)
        row = [i % 3 for i, width in enumerate(self.section) for _ in range(width)]  # channel -> t/h/w row
        ang = torch.stack([positions[row[j]].float() * inv[j] for j in range(hd // 2)], -1)  # [n, hd/2]
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], -1) * sin
