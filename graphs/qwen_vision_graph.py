"""Qwen2.5-VL's vision tower in export form: every grid-dependent index is an input, no Python control flow.

transformers' module loops over images and windows (``cu_seqlens`` splits) and
builds window order and rotary positions from ``grid_thw`` in Python; traced,
that would freeze one image size into the graph. Here preprocessing
(engines/qwen_vision_inputs.py) computes them per request, as TensorRT-Edge-LLM
and onnxruntime-genai do, and the graph only gathers and masks:

- ``window_index`` [U]: merge units (2x2 patches) in window order; ``reverse_index`` [U] undoes it;
- ``rotary_pos`` [P, 2]: (row, col) of every patch, already in window order;
- ``image_segments`` / ``window_segments`` [P]: which image / window each patch (window order) is in;
  full-attention blocks attend within an image, the others within a window;
- ``image_grid_thw`` [B, 3]: only its length (B) is read, to split the merged tokens per image.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class QwenVisionGraph(nn.Module):
    """pixel_values [P, C * t * ps * ps] + index inputs -> image_features [B, N_v, d_text]."""

    def __init__(self, visual):
        """visual: transformers' ``Qwen2_5_VisionTransformerPretrainedModel`` (its weights are shared)."""
        super().__init__()
        self.visual = visual
        cfg = visual.config
        self.unit = cfg.spatial_merge_size**2
        self.num_heads = cfg.num_heads
        self.full_blocks = set(cfg.fullatt_block_indexes)

    def input_names(self) -> list[str]:
        return ["pixel_values", "image_grid_thw", "window_index", "reverse_index", "rotary_pos", "image_segments",
                "window_segments"]

    def output_names(self) -> list[str]:
        return ["image_features"]

    def forward(self, pixel_values, image_grid_thw, window_index, reverse_index, rotary_pos, image_segments,
                window_segments):
        x = self.visual.patch_embed(pixel_values)  # [P, D]
        x = self._window_order(x, window_index)  # [P, D], window order
        cos, sin = self._rotary(rotary_pos, x)  # [P, hd] each
        image_mask = _block_mask(image_segments)  # [P, P] additive: 0 inside an image, -inf across
        window_mask = _block_mask(window_segments)  # [P, P] additive: 0 inside a window
        for i, block in enumerate(self.visual.blocks):
            mask = image_mask if i in self.full_blocks else window_mask
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, mask)
            x = x + block.mlp(block.norm2(x))
        merged = self.visual.merger(x)  # [U, d_text], window order
        merged = torch.index_select(merged, 0, reverse_index)  # [U, d_text], image order
        return merged.reshape(image_grid_thw.shape[0], -1, merged.shape[-1])  # [B, N_v, d_text]

    def _window_order(self, x: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
        units = x.reshape(-1, self.unit, x.shape[-1])  # [U, unit, D]
        return torch.index_select(units, 0, window_index).reshape(-1, x.shape[-1])  # [P, D]

    def _rotary(self, rotary_pos: torch.Tensor, x: torch.Tensor):
        inv_freq = self.visual.rotary_pos_emb.inv_freq  # [hd / 4]
        freqs = rotary_pos[..., None].float() * inv_freq  # [P, 2, hd / 4]
        hw = freqs.reshape(freqs.shape[0], -1)  # [P, hd / 2]: row frequencies, then column frequencies
        emb = torch.cat((hw, hw), dim=-1)  # [P, hd]
        return emb.cos(), emb.sin()

    def _attention(self, attn, h: torch.Tensor, cos, sin, mask) -> torch.Tensor:
        p, d = h.shape
        qkv = attn.qkv(h).reshape(p, 3, self.num_heads, -1).permute(1, 2, 0, 3)  # [3, H, P, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        # rotary in fp32, as transformers does, then back to the model dtype
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(h.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(h.dtype)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling + mask  # [H, P, P]
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(0, 1).reshape(p, d)  # [H, P, hd] -> [P, H * hd]
        return attn.proj(out)


def _block_mask(segments: torch.Tensor) -> torch.Tensor:
    """[P] segment ids -> [P, P] fp32 additive mask: 0 where both patches share a segment, -1e30 elsewhere.

    Finite, so no inf constant reaches an engine; exp(-1e30 - max) is exactly 0 in fp32 all the same.
    """
    apart = segments[:, None] != segments[None, :]  # [P, P]
    return apart.float() * -1e30
