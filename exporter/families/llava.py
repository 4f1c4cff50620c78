"""LLaVA-1.5 (``LlavaForConditionalGeneration``, Llama text model, CLIP tower): fixed 576 visual tokens."""

from __future__ import annotations

from dataclasses import dataclass

from graphs.config import DecoderConfig

from .base import Family, PromptInputs, check_silu, rope_parameters


@dataclass(frozen=True)
class LlavaFamily(Family):
    def builtin_config(self, alias: str):
        from ..presets import llava_15_7b_config

        return llava_15_7b_config()

    def preset_config(self, name: str):
        from ..presets import preset_config

        return preset_config(name)

    def build_preset(self, name: str):
        from ..presets import build_preset

        return build_preset(name)

    def from_pretrained(self, source: str, local_only: bool, dtype):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(
            source, local_files_only=local_only, trust_remote_code=False, dtype=dtype
        )
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_only, trust_remote_code=False)
        return model.eval(), processor

    def model_class(self):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def preset_seed(self, name: str) -> int:
        from ..presets import PRESETS

        return PRESETS[name]["seed"]

    def preset_processor(self, name: str):
        from ..presets import preset_processor

        return preset_processor(name)

    def decoder_config(self, config) -> DecoderConfig:
        """Text-model dimensions read through optimum's normalized configs."""
        from optimum.utils.normalized_config import NormalizedConfigManager

        text = config.text_config
        norm = NormalizedConfigManager.get_normalized_config_class(text.model_type)(text)
        check_silu(text)
        rope = rope_parameters(text)
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

    def num_visual_tokens(self, config, processor=None) -> int:
        """(image / patch)^2, the CLS token dropped by the 'default' strategy."""
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches if config.vision_feature_select_strategy == "default" else patches + 1

    def encode(self, processor, config, prompts: list[str], images: list) -> PromptInputs:
        from engines.inputs import encode

        return encode(processor, prompts, images, config.image_token_id, self.num_visual_tokens(config))

    def vision_encoder(self, hf_model):
        from graphs.llava import VisionEncoder

        return VisionEncoder(hf_model)


LLAVA = LlavaFamily(
    model_type="llava",
    text_model_types=("llama",),
    tiny_preset="llava-tiny",
    presets=("llava-tiny", "llava-bench", "llava-grounding"),
    aliases={"llava": "llava-hf/llava-1.5-7b-hf"},
    alias_titles={"llava": "LLaVA-1.5-7B"},
)
