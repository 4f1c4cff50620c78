"""Model families reroute can route, with per-family facts (optimum-style registry).

Every family names a tiny built-in preset; a test fails when a registered
family has none. Text-model dimensions are read through optimum's normalized
configs, so families with other attribute names plug in the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphs.config import DecoderConfig, UnsupportedModelError


@dataclass(frozen=True)
class Family:
    model_type: str
    text_model_types: tuple[str, ...]
    tiny_preset: str
    # parity tolerances between backends, per export dtype (see exporter/parity.py)
    tolerances: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "llava": Family(
        model_type="llava",
        text_model_types=("llama",),
        tiny_preset="llava-tiny",
        tolerances={
            # fp32: tight, routing identical, every greedy sequence identical
            "float32": {"atol": 1e-4, "rtol": 1e-4, "routing_overlap": 1.0, "token_match": 1.0,
                        "first_token_match": 1.0},
            # fp16: half-precision rounding differs between backends, so near-tied scores can swap a
            # token at the k-th place; outputs that depend on that choice are compared where both agree.
            # Greedy sequences of random-weight presets diverge after a few fp16 steps, so fp16 requires
            # the first token (the prefill's argmax) and reports the agreeing prefix length.
            "float16": {"atol": 0.25, "rtol": 0.05, "routing_overlap": 0.95, "token_match": 0.0,
                        "first_token_match": 0.9},
        },
    ),
}


def family_of(config) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; supported families: {', '.join(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    text_type = config.text_config.model_type
    if text_type not in family.text_model_types:
        raise UnsupportedModelError(
            f"{model_type} with a {text_type!r} text model is not supported ({', '.join(family.text_model_types)} only)"
        )
    return family


def decoder_config(config) -> DecoderConfig:
    """The routed decoder's config from a transformers VLM config."""
    from optimum.utils.normalized_config import NormalizedConfigManager

    family_of(config)
    text = config.text_config
    norm = NormalizedConfigManager.get_normalized_config_class(text.model_type)(text)
    if getattr(text, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"hidden_act {text.hidden_act!r} is not supported (silu only)")
    rope = getattr(text, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"rope_type {rope['rope_type']!r} is not supported (default RoPE only)")
    heads = norm.num_attention_heads
    return DecoderConfig(
        hidden_size=norm.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=norm.num_layers,
        num_heads=heads,
        num_kv_heads=norm.num_key_value_heads or heads,
        head_dim=getattr(text, "head_dim", None) or norm.hidden_size // heads,
        vocab_size=norm.vocab_size,
        rms_norm_eps=text.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", 10000.0)),
        attention_bias=bool(getattr(text, "attention_bias", False)),
        mlp_bias=bool(getattr(text, "mlp_bias", False)),
    )


def num_visual_tokens(config) -> int:
    """Visual tokens per image: (image / patch)^2, the CLS token dropped by the 'default' strategy."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1
