"""What ``export`` adds for dynamic-resolution families (Qwen2.5-VL): axes, example inputs, manifest entries.

One export path serves every family (exporter/onnx_export.py); this module holds
the few places where a dynamic-N_v graph differs: the vision graph takes
flattened patches plus grid-dependent index tensors, the prefill takes M-RoPE
position ids and ``visual_span`` (N_v as a shape), decode takes ``[3, B, 1]``
positions, and the manifest states the positions input and the pixel capacity.
"""

from __future__ import annotations

import torch

from engines.generate import decode_positions
from engines.inputs import IMAGE_PLACEHOLDER
from engines.qwen_vision_inputs import VISION_INDEX_INPUTS, vision_index_inputs

from .samples import sample

DYNAMIC_OPS = ["PoolSelectDynamic", "PoolGatherDynamic", "PoolScatterDynamic"]


def dynamic_axes(name: str, axes: dict) -> dict:
    """The fixed-resolution axes of graph ``name``, adjusted for a dynamic-N_v graph."""
    axes = dict(axes)
    if name == "vision":
        axes = {"pixel_values": {0: "patches"}, "image_grid_thw": {0: "batch"}, "rotary_pos": {0: "patches"},
                "window_index": {0: "merge_units"}, "reverse_index": {0: "merge_units"},
                "window_slots": {0: "windows"}, "patch_slots": {0: "patches"},
                "image_features": {0: "batch", 1: "N_v"}}
    elif name == "prefill":
        axes.update(position_ids={1: "batch", 2: "sequence"}, visual_span={0: "N_v"})
        axes.update({n: {0: "batch", 1: f"k_{n.split('.')[1]}"} for n in axes if n.startswith("routing.")})
    elif name == "decode":
        axes["position_ids"] = {1: "batch"}  # [3, batch, 1]
    return axes


def example_inputs(loaded, modules, dtype) -> dict[str, tuple]:
    """Tracing inputs from one synthetic sample, run through the torch graphs (as for fixed resolution)."""
    family = loaded.family
    prompt, image = sample(0)
    x = loaded.encode([prompt.replace(IMAGE_PLACEHOLDER, family.placeholder)], [image])
    index = vision_index_inputs(x.image_grid_thw, loaded.config.vision_config)
    vision = (torch.from_numpy(x.pixel_values).to(dtype), torch.from_numpy(x.image_grid_thw),
              *[torch.from_numpy(index[n]) for n in VISION_INDEX_INPUTS])
    ids = torch.from_numpy(x.input_ids)
    span = torch.arange(x.visual_start, x.visual_start + x.num_visual)
    with torch.inference_mode():
        features = modules["vision"](*vision)
        embeds = modules["embed"](ids, features)
        prefill = (embeds, torch.tensor([x.visual_start]), torch.from_numpy(x.position_ids), span)
        out = modules["prefill"](*prefill)
    num_layers = loaded.decoder_config.num_layers
    past = tuple(t.clone() for t in out[1 : 1 + 2 * num_layers])
    step = modules["embed"](ids[:, -1:], features[:, :0])
    positions = torch.from_numpy(decode_positions(ids.shape[1], 0, 1, x.rope_delta))  # [3, 1, 1]
    return {"vision": vision, "embed": (ids, features), "prefill": prefill, "decode": (step, positions, *past)}


def manifest_entries(loaded) -> tuple[dict, dict]:
    """(model fields, capacity fields) for the manifest: vision settings, pixel range, positions input;
    ``max_visual_tokens`` bounds N_v (and so every shape-derived TopK K, engines/trt_check.py)."""
    fields = loaded.family.manifest_model_fields(loaded.config, loaded.processor)
    capacity = {"max_pixels": fields["max_pixels"], "max_visual_tokens": fields["max_visual_tokens"]}
    return fields, capacity


def max_visual_tokens_ok(bound: int) -> bool:
    """TensorRT's TopK takes K <= 3840, and K <= N_v: the capacity must keep N_v within it."""
    from engines.trt_support import TOPK_MAX_K

    return 1 <= bound <= TOPK_MAX_K
