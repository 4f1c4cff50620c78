"""The unrouted LLaVA pieces around the decoder: vision encoder + projector, and the embedding merge."""

from __future__ import annotations

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """pixel_values [B, 3, H, W] -> image_features [B, N_v, d_text] (CLIP tower + projector)."""

    def __init__(self, hf_model):
        super().__init__()
        cfg = hf_model.config
        if not isinstance(cfg.vision_feature_layer, int):
            raise ValueError("multi-layer vision features are not supported yet")
        self.vision_tower = hf_model.model.vision_tower
        self.projector = hf_model.model.multi_modal_projector
        self.feature_layer = cfg.vision_feature_layer
        self.drop_cls = cfg.vision_feature_select_strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[self.feature_layer]  # [B, 1 + patches, d_vision]
        if self.drop_cls:
            feats = feats[:, 1:]  # [B, N_v, d_vision]
        return self.projector(feats)  # [B, N_v, d_text]


class MergeEmbedding(nn.Module):
    """input_ids [B, T], image_features [B, N, d] -> inputs_embeds [B, T, d].

    The i-th image token of a sample takes row i of its image features. Tokens
    beyond N (or N = 0, as in decode steps) keep their plain embedding, so the
    same graph serves prefill and decode without data-dependent shapes.
    """

    def __init__(self, embed_tokens: nn.Embedding, image_token_id: int):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.image_token_id = image_token_id

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        text = self.embed_tokens(input_ids)  # [B, T, d]
        b, _, d = text.shape
        n = image_features.shape[1]
        is_image = input_ids == self.image_token_id  # [B, T]
        ordinal = torch.cumsum(is_image.to(torch.int64), dim=1) - 1  # [B, T] i-th image token
        use = is_image & (ordinal < n)
        padded = torch.cat((image_features.to(text.dtype), text.new_zeros(b, 1, d)), dim=1)  # [B, N + 1, d]
        rows = torch.where(use, ordinal, torch.full_like(ordinal, n))  # row N is the zero pad
        feats = torch.gather(padded, 1, rows[..., None].expand(-1, -1, d))  # [B, T, d]
        return torch.where(use[..., None], feats, text)
