"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic visual token counts and M-RoPE (SPEC section 9)."""

from __future__ import annotations

from dataclasses import dataclass

from graphs.config import DecoderConfig, UnsupportedModelError

from .base import Family, PromptInputs, check_silu, rope_parameters


@dataclass(frozen=True)
class Qwen2_5_VLFamily(Family):
    def builtin_config(self, alias: str):
        from ..presets_qwen import qwen2_5_vl_7b_config

        return qwen2_5_vl_7b_config()

    def preset_config(self, name: str):
        from ..presets_qwen import preset_config

        return preset_config(name)

    def build_preset(self, name: str):
        from ..presets_qwen import build_preset

        return build_preset(name)

    def from_pretrained(self, source: str, local_only: bool, dtype):
        """Weights, tokenizer and the PIL image processor; no video processor (it needs torchvision)."""
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from engines.qwen_processor import images_only_processor, saved_chat_template

        kwargs = {"local_files_only": local_only, "trust_remote_code": False}
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(source, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(source, **kwargs)
        return model.eval(), images_only_processor(image_processor, tokenizer, saved_chat_template(source, tokenizer))

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def preset_seed(self, name: str) -> int:
        from ..presets_qwen import PRESETS

        return PRESETS[name]["seed"]

    def preset_processor(self, name: str):
        from ..presets_qwen import PRESETS, build_processor

        return build_processor(PRESETS[name]["text"]["vocab_size"])

    def load_processor(self, directory: str):
        """Images only (no video processor: it needs torchvision), as from_pretrained builds it."""
        from engines.qwen_processor import load_images_only_processor

        return load_images_only_processor(directory)

    def decoder_config(self, config) -> DecoderConfig:
        text = config.text_config
        check_silu(text)
        rope = rope_parameters(text)
        heads = text.num_attention_heads
        head_dim = text.hidden_size // heads  # what Qwen2_5_VLAttention uses, whatever config.head_dim says
        section = tuple(int(s) for s in rope.get("mrope_section") or ())
        if sum(section) != head_dim // 2:
            raise UnsupportedModelError(f"mrope_section {list(section)} does not split head_dim {head_dim}")
        if getattr(text, "use_sliding_window", False):
            raise UnsupportedModelError("sliding-window attention is not supported")
        return DecoderConfig(
            hidden_size=text.hidden_size, intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers, num_heads=heads,
            num_kv_heads=text.num_key_value_heads or heads, head_dim=head_dim, vocab_size=text.vocab_size,
            rms_norm_eps=text.rms_norm_eps, rope_theta=float(rope.get("rope_theta", 1000000.0)),
            qkv_bias=True, mrope_section=section,
        )

    def num_visual_tokens(self, config, processor=None) -> int:
        """The most visual tokens an image can give: ``floor(max_pixels / (patch * merge)^2)``."""
        return visual_tokens_bound(config, _max_pixels(processor))

    def visual_tokens_for_size(self, config, width: int, height: int, processor=None) -> int:
        """N_v of a ``width`` x ``height`` image: ``smart_resize`` to the merge factor, then (h/28)(w/28)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = _merge_factor(config)
        min_pixels = _min_pixels(processor)
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=_max_pixels(processor))
        return (h // factor) * (w // factor)

    def encode(self, processor, config, prompts: list[str], images: list) -> PromptInputs:
        """One image per prompt, all images of a batch with the same N_v; M-RoPE positions from transformers."""
        from engines.qwen_inputs import encode

        return encode(processor, config, prompts, images)

    def vision_encoder(self, hf_model):
        from graphs.qwen2_5_vl import QwenVisionEncoder

        return QwenVisionEncoder(hf_model)

    def vision_graph(self, hf_model):
        """Export form: grid-dependent index tensors are inputs (graphs/qwen_vision_graph.py)."""
        from graphs.qwen_vision_graph import QwenVisionGraph

        return QwenVisionGraph(hf_model.model.visual)

    def manifest_model_fields(self, config, processor) -> dict:
        """What a runtime needs without transformers' config: the vision settings its preprocessing uses,
        the pixel range (N_v <= max_pixels / 28^2 is the artifact's capacity) and the positions input."""
        vision = config.vision_config
        return {
            "vision": {"patch_size": vision.patch_size, "spatial_merge_size": vision.spatial_merge_size,
                       "window_size": vision.window_size, "temporal_patch_size": vision.temporal_patch_size},
            "min_pixels": _min_pixels(processor), "max_pixels": _max_pixels(processor),
            "max_visual_tokens": self.num_visual_tokens(config, processor),
            "positions": {"input": "position_ids", "kind": "mrope", "shape": [3, "batch", "sequence"],
                          "mrope_section": list(self.decoder_config(config).mrope_section)},
            "visual_span_input": "visual_span",
        }


def visual_tokens_bound(config, max_pixels: int) -> int:
    return max_pixels // _merge_factor(config) ** 2


def _merge(config) -> int:
    return config.vision_config.spatial_merge_size


def _merge_factor(config) -> int:
    return config.vision_config.patch_size * _merge(config)


def _max_pixels(processor) -> int:
    from ..presets_qwen import MAX_PIXELS

    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    return int(size.get("longest_edge", MAX_PIXELS))


def _min_pixels(processor) -> int:
    from ..presets_qwen import MIN_PIXELS

    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    return int(size.get("shortest_edge", MIN_PIXELS))


QWEN2_5_VL = Qwen2_5_VLFamily(
    model_type="qwen2_5_vl",
    text_model_types=("qwen2_5_vl_text",),
    tiny_preset="qwen2.5-vl-tiny",
    presets=("qwen2.5-vl-tiny", "qwen2.5-vl-bench"),
    aliases={"qwen2.5-vl": "Qwen/Qwen2.5-VL-7B-Instruct"},
    alias_titles={"qwen2.5-vl": "Qwen2.5-VL-7B-Instruct"},
    placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    dynamic_visual_tokens=True,
)
