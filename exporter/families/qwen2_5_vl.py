"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic visual token counts and M-RoPE (SPEC section 9)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphs.config import DecoderConfig, UnsupportedModelError

from engines.errors import RerouteError
from .base import Family, PromptInputs, check_silu, rope_parameters

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


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
        if len(images) != len(prompts):
            raise RerouteError(f"one image per prompt: got {len(images)} images for {len(prompts)} prompts")
        for prompt in prompts:
            check_prompt(prompt)
        batch = processor(images=images, text=prompts, return_tensors="np")
        grid = np.asarray(batch["image_grid_thw"], dtype=np.int64)  # [B, 3]
        counts = sorted({int(np.prod(g)) // _merge(config) ** 2 for g in grid})
        if len(counts) != 1:
            raise RerouteError(f"all images of a batch must give the same number of visual tokens, got {counts}; "
                               f"resize them to one size or send them separately")
        num_visual = counts[0]
        if len({len(ids) for ids in batch["input_ids"]}) != 1:
            raise RerouteError("prompts of a batch must tokenize to the same length")
        input_ids = np.asarray(batch["input_ids"], dtype=np.int64)
        start = visual_span_start(input_ids, config, num_visual)
        positions, delta = rope_index(config, input_ids, np.asarray(batch["mm_token_type_ids"]), grid)
        return PromptInputs(input_ids, np.asarray(batch["pixel_values"], dtype=np.float32), start, num_visual,
                            grid, positions, delta)

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


def check_prompt(prompt: str) -> None:
    if VIDEO_PAD in prompt:
        raise RerouteError("videos are not supported: give one image per prompt")
    count = prompt.count(IMAGE_PAD)
    if count != 1:
        raise RerouteError(f"the prompt must contain exactly one {IMAGE_PAD} (inside <|vision_start|>..."
                           f"<|vision_end|>), found {count}" + (" (use --chat to wrap a plain question)"
                                                                 if count == 0 else ""))


def visual_span_start(input_ids: np.ndarray, config, num_visual: int) -> int:
    """The ``<|image_pad|>`` run between ``<|vision_start|>`` and ``<|vision_end|>``, same place in every
    sample, with at least one text token after ``<|vision_end|>`` (the scoring query is the last token)."""
    starts = set()
    for row in input_ids:
        where = np.flatnonzero(row == config.image_token_id)
        if len(where) != num_visual or where[-1] - where[0] != num_visual - 1:
            raise RerouteError(f"expected one contiguous span of {num_visual} image tokens per sample, "
                               f"found {len(where)}")
        start, end = int(where[0]), int(where[-1]) + 1
        if start == 0 or row[start - 1] != config.vision_start_token_id or end >= len(row) \
                or row[end] != config.vision_end_token_id:
            raise RerouteError("the image tokens must sit between <|vision_start|> and <|vision_end|>")
        starts.add(start)
    if len(starts) != 1:
        raise RerouteError("all samples of a batch must place the image at the same position")
    start = starts.pop()
    if start + num_visual + 1 >= input_ids.shape[1]:
        raise RerouteError("the prompt needs at least one text token after the image (<|vision_end|> is last)")
    return start


def rope_index(config, input_ids: np.ndarray, mm_token_type_ids: np.ndarray, image_grid_thw: np.ndarray):
    """M-RoPE position ids [3, B, T] and rope deltas [B] from transformers' own ``get_rope_index``.

    It only reads ``config``, so it runs on a stand-in object and needs no weights (serving and the
    ONNX backends preprocess the same way).
    """
    import types

    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    shim = types.SimpleNamespace(config=config)
    shim.get_vision_position_ids = types.MethodType(Qwen2_5_VLModel.get_vision_position_ids, shim)
    positions, deltas = Qwen2_5_VLModel.get_rope_index(
        shim, torch.from_numpy(input_ids), mm_token_type_ids=torch.from_numpy(mm_token_type_ids.astype(np.int64)),
        image_grid_thw=torch.from_numpy(image_grid_thw),
    )
    return positions.numpy().astype(np.int64), deltas.reshape(-1).numpy().astype(np.int64)


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
    placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    dynamic_visual_tokens=True,
)
