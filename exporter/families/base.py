"""What a model family tells reroute: one subclass per VLM family (optimum's registry as the pattern).

A family owns everything that differs between VLMs: its built-in configs and
seeded presets, reading its config into a :class:`~graphs.config.DecoderConfig`,
loading weights and processor, prompt building and visual span detection,
position ids (1-D or M-RoPE), the vision and embedding modules the reference
runs, and parity tolerances. Adding a family = one module here + its tiny preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.inputs import PromptInputs
from graphs.config import DecoderConfig, UnsupportedModelError

DEFAULT_TOLERANCES = {
    # fp32: tight, routing identical, every greedy sequence identical
    "float32": {"atol": 1e-4, "rtol": 1e-4, "routing_overlap": 1.0, "token_match": 1.0, "first_token_match": 1.0},
    # fp16: half-precision rounding differs between backends, so near-tied scores can swap a token at the
    # k-th place; outputs that depend on that choice are compared where both agree. Greedy sequences of
    # random-weight presets diverge after a few fp16 steps, so fp16 requires the first token (the prefill's
    # argmax) and reports the agreeing prefix length.
    "float16": {"atol": 0.25, "rtol": 0.05, "routing_overlap": 0.95, "token_match": 0.0, "first_token_match": 0.9},
}


@dataclass(frozen=True)
class Family:
    """Base family. Subclasses fill the fields and override the methods that differ."""

    model_type: str
    text_model_types: tuple[str, ...]
    tiny_preset: str
    presets: tuple[str, ...] = ()
    aliases: dict = field(default_factory=dict)  # short name -> hub id, with a built-in config
    alias_titles: dict = field(default_factory=dict)  # short name -> the model's name in messages
    tolerances: dict = field(default_factory=lambda: DEFAULT_TOLERANCES)
    placeholder: str = "<image>"  # what a prompt contains once, where the image goes
    dynamic_visual_tokens: bool = False  # N_v depends on the image (dynamic resolution)

    def check(self, config) -> None:
        text_type = config.text_config.model_type
        if text_type not in self.text_model_types:
            raise UnsupportedModelError(f"{self.model_type} with a {text_type!r} text model is not supported "
                                        f"({', '.join(self.text_model_types)} only)")

    # --- configs and weights -------------------------------------------------------------------------
    def builtin_config(self, alias: str):
        raise NotImplementedError

    def preset_config(self, name: str):
        raise NotImplementedError

    def build_preset(self, name: str):
        raise NotImplementedError

    def from_pretrained(self, source: str, local_only: bool, dtype):
        raise NotImplementedError

    def model_class(self):
        """transformers' class for this family (the streamed export builds a weightless one to trace)."""
        raise NotImplementedError

    def preset_seed(self, name: str) -> int:
        raise NotImplementedError

    def preset_processor(self, name: str):
        raise NotImplementedError

    def load_processor(self, directory: str):
        """The processor saved beside a checkpoint's weights."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(directory, local_files_only=True, trust_remote_code=False)

    def decoder_config(self, config) -> DecoderConfig:
        raise NotImplementedError

    def num_visual_tokens(self, config, processor=None) -> int:
        """Visual tokens per image; for dynamic families, the largest an image can give (the capacity)."""
        raise NotImplementedError

    # --- prompts and inputs ---------------------------------------------------------------------------
    def encode(self, processor, config, prompts: list[str], images: list) -> PromptInputs:
        raise NotImplementedError

    # --- reference modules ----------------------------------------------------------------------------
    def vision_encoder(self, hf_model):
        raise NotImplementedError

    def vision_graph(self, hf_model):
        """The vision module in export form (what ``export`` traces): LLaVA's takes pixel_values only."""
        from graphs.export_graphs import VisionGraph

        return VisionGraph(self.vision_encoder(hf_model))

    def manifest_model_fields(self, config, processor) -> dict:
        """Family-specific entries of the manifest's ``model`` section (none for fixed-resolution families)."""
        return {}

    def merge_embedding(self, hf_model):
        from graphs.llava import MergeEmbedding

        return MergeEmbedding(hf_model.get_input_embeddings(), hf_model.config.image_token_id)


def check_silu(text_config) -> None:
    if getattr(text_config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {text_config.hidden_act!r} is not supported (silu only)")


def rope_parameters(text_config) -> dict:
    rope = getattr(text_config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"rope_type {rope['rope_type']!r} is not supported (default RoPE only)")
    return rope
