"""Multimodal RoPE (Qwen2-VL / Qwen2.5-VL): 3-D position ids, rotary channels split among them.

Position ids are ``[3, B, n]`` (temporal, height, width). ``mrope_section``
(e.g. [16, 24, 24] for head_dim 128) splits the ``head_dim / 2`` rotary
frequencies into three consecutive chunks; chunk ``i`` is driven by row ``i``.
Text tokens carry the same value on all three rows, which makes M-RoPE equal
to plain 1-D RoPE for them.
"""

from __future__ import annotations

import torch


def mrope_angles(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section) -> torch.Tensor:
    """positions [3, B, n] -> rotation angles [B, n, hd/2], each chunk taken from its own row."""
    freqs = positions[..., None].float() * inv_freq  # [3, B, n, hd/2]
    chunks = freqs.split(list(mrope_section), dim=-1)  # per chunk [3, B, n, section]
    return torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)  # [B, n, hd/2]


def gather_positions(gather, positions: torch.Tensor) -> torch.Tensor:
    """Apply a sequence gather ``[B, n, C] -> [B, m, C]`` to 1-D ``[B, n]`` or 3-D ``[3, B, n]`` positions."""
    if positions.dim() == 2:
        return gather(positions[..., None])[..., 0]  # [B, m]
    return gather(positions.permute(1, 2, 0)).permute(2, 0, 1)  # [B, n, 3] -> [B, m, 3] -> [3, B, m]

