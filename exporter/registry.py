"""Model families reroute can route: the per-family facts live in exporter/families/ (one module each).

This module keeps the flat helpers the rest of the toolchain calls.
"""

from __future__ import annotations

from graphs.config import DecoderConfig

from .families import FAMILIES, Family, family_of

__all__ = ["FAMILIES", "Family", "decoder_config", "family_of", "num_visual_tokens"]


def decoder_config(config) -> DecoderConfig:
    """The routed decoder's config from a transformers VLM config."""
    return family_of(config).decoder_config(config)


def num_visual_tokens(config, processor=None) -> int:
    """Visual tokens per image (for dynamic-resolution families: the most one image can give)."""
    return family_of(config).num_visual_tokens(config, processor)
