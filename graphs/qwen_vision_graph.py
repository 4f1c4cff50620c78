"""Qwen2.5-VL's vision tower in export form: every grid-dependent index is an input, no Python control flow.

transformers' module loops over images and windows (``cu_seqlens`` splits) and
builds window order and rotary positions from ``grid_thw`` in Python; traced,
that would freeze one image size into the graph. Here preprocessing
(engines/qwen_vision_inputs.py) computes them per request, as TensorRT-Edge-LLM
and onnxruntime-genai do, and the graph only gathers and masks:

- ``window_index`` [U]: merge units (2x2 patches) in window order; ``reverse_index`` [U] undoes it;
- ``rotary_pos`` [P, 2]: (row, col) of every patch, already in window order;
- ``window_slots`` [W, S]: the patches (window order) of each attention window, padded with P (a zero
  row) to S = (window_size / patch_size)^2 = 64; ``patch_slots`` [P]: each patch's place in [W * S];
- ``image_grid_thw`` [B, 3]: only its length (B) is read, to split the patches and merged tokens per image.

No [P, P] mask is built (at 3840 visual tokens, P = 15360 patches: 0.9 GB per fp32 mask). Windowed blocks
attend within a batch of padded windows, [W, H, S, S], with a key mask [W, 1, 1, S] on the pad slots; the
full-attention blocks attend within each image as a batch [B, H, P / B, P / B], unmasked: in window order
each image's patches are one contiguous run, and the images of a batch have the same N_v, hence the same
patch count.
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
        return ["pixel_values", "image_grid_thw", "window_index", "reverse_index", "rotary_pos", "window_slots",
                "patch_slots"]

    def output_names(self) -> list[str]:
        return ["image_features"]

    def forward(self, pixel_values, image_grid_thw, window_index, reverse_index, rotary_pos, window_slots,
                patch_slots):
        x = self.visual.patch_embed(pixel_values)  # [P, D]
        x = self._window_order(x, window_index)  # [P, D], window order
        cos, sin = self._rotary(rotary_pos, x)  # [P, hd] each
        images = image_grid_thw.shape[0]
        per_image = [t.reshape(images, -1, t.shape[-1]) for t in (cos, sin)]  # [B, P / B, hd] each
        per_window = [_by_window(t, window_slots) for t in (cos, sin)]  # [W, S, hd] each
        pad = window_slots == x.shape[0]  # [W, S]: slots past a window's end
        key_mask = (pad.float() * -1e30)[:, None, None, :]  # [W, 1, 1, S] additive; finite (see _attention)
        for i, block in enumerate(self.visual.blocks):
            h = block.norm1(x)  # [P, D]
            if i in self.full_blocks:
                out = self._attention(block.attn, h.reshape(images, -1, h.shape[-1]), *per_image)  # [B, P/B, D]
                x = x + out.reshape(-1, h.shape[-1])  # [P, D]
            else:
                out = self._attention(block.attn, _by_window(h, window_slots), *per_window, key_mask)  # [W, S, D]
                x = x + torch.index_select(out.reshape(-1, h.shape[-1]), 0, patch_slots)  # [P, D]
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

    def _attention(self, attn, h: torch.Tensor, cos, sin, key_mask=None) -> torch.Tensor:
        """Attention within each of N groups: h [N, L, D], cos/sin [N, L, hd], key_mask [N, 1, 1, L] additive.

        The mask is finite (-1e30), so no inf constant reaches an engine; exp(-1e30 - max) is exactly 0 in
        fp32 all the same (every group has a real key, so no row is all masked)."""
        n, length, d = h.shape
        qkv = attn.qkv(h).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, N, H, L, hd]
        q, k, v = qkv[0], qkv[1], qkv[2]
        cos, sin = cos[:, None], sin[:, None]  # [N, 1, L, hd]
        # rotary in fp32, as transformers does, then back to the model dtype
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(h.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(h.dtype)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scaling  # [N, H, L, L]
        if key_mask is not None:
            scores = scores + key_mask
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(n, length, d)  # [N, H, L, hd] -> [N, L, H * hd]
        return attn.proj(out)


def _by_window(t: torch.Tensor, window_slots: torch.Tensor) -> torch.Tensor:
    """[P, C] rows -> [W, S, C] padded windows (slot P reads an appended zero row)."""
    padded = torch.cat([t, t.new_zeros(1, t.shape[-1])], dim=0)  # [P + 1, C]
    rows = torch.index_select(padded, 0, window_slots.reshape(-1))  # [W * S, C]
    return rows.reshape(window_slots.shape[0], window_slots.shape[1], t.shape[-1])  # [W, S, C]
