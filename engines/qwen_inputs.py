"""Qwen2.5-VL request encoding: prompt checks, the visual span, N_v per image and M-RoPE positions.

Here in engines (not with the family in exporter/) because serving and artifact
backends encode requests with the artifact's processor and saved config alone.
"""

from __future__ import annotations

import numpy as np

from .errors import RerouteError
from .inputs import PromptInputs
from .qwen_rope import rope_index

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


def encode(processor, config, prompts: list[str], images: list) -> PromptInputs:
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


def _merge(config) -> int:
    return config.vision_config.spatial_merge_size
