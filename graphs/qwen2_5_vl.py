"""The unrouted Qwen2.5-VL pieces around the decoder: the vision tower on flattened patches.

The embedding merge is LLaVA's (graphs/llava.MergeEmbedding): the i-th
``<|image_pad|>`` token of a sample takes row i of its image's features.
"""

from __future__ import annotations

import torch
from torch import nn


class QwenVisionEncoder(nn.Module):
    """pixel_values [B * patches, C] + image_grid_thw [B, 3] -> image_features [B, N_v, d_text].

    The ViT (2-D rotary, window attention with full-attention blocks, 2x2 patch merger) is transformers'
    own module; every image of a batch has the same grid, so the merged tokens split evenly per image.
    """

    def __init__(self, hf_model):
        super().__init__()
        self.visual = hf_model.model.visual

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixel_values, grid_thw=image_grid_thw, return_dict=True)
        merged = out.pooler_output  # [B * N_v, d_text], images in order
        return merged.reshape(image_grid_thw.shape[0], -1, merged.shape[-1])  # [B, N_v, d_text]
