"""Triton Python-backend model for Qwen2.5-VL artifacts: the BLS pipeline of triton_pipeline.py, dynamic resolution.

``reroute deploy`` copies this file to ``reroute_pipeline/1/model.py`` and, beside it,
``triton_pipeline.py`` (the request handling and greedy decoding it extends) and
three self-contained preprocessing modules of reroute's engines: ``qwen_processor.py``
(the images-only processor), ``qwen_vision_inputs.py`` (the vision graph's
grid-dependent index inputs) and ``qwen_rope.py`` (M-RoPE position ids). Inside the
Triton container it needs numpy, pillow, torch and transformers, not reroute.

Per request: one ``<|image_pad|>`` inside ``<|vision_start|>...<|vision_end|>``; the
image's own grid gives N_v (at most the artifact's ``max_visual_tokens``); the
vision graph gets the grid and its index tensors, the prefill the 3-D M-RoPE
positions and the visual span (its length is N_v, from which the graph derives
every k_s); decode positions follow the unrouted model (``L + rope_delta + step``).
Token for token what ``reroute generate --backend onnxruntime`` computes.
"""

from __future__ import annotations

import importlib.util
import os
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


def _sibling(name):
    """A module ``reroute deploy`` copied beside this file, loaded by path (whether Triton's stub puts this
    folder on sys.path or not)."""
    spec = importlib.util.spec_from_file_location(f"reroute_pipeline_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


base = _sibling("triton_pipeline")
BadRequest = base.BadRequest


class TritonPythonModel(base.TritonPythonModel):
    def initialize(self, args):
        from transformers import AutoConfig

        super().initialize(args)
        # token ids, merge size and M-RoPE settings: the checkpoint's config, saved beside the processor
        self.hf_config = AutoConfig.from_pretrained(os.path.join(self.here, "processor"), local_files_only=True)
        self.vision_config = types.SimpleNamespace(**self.cfg["vision"])
        self.vision_index_inputs = _sibling("qwen_vision_inputs").vision_index_inputs
        self.rope_index = _sibling("qwen_rope").rope_index

    def _load_processor(self, directory):
        return _sibling("qwen_processor").load_images_only_processor(directory)

    def _check_prompt(self, prompt):
        if VIDEO_PAD in prompt:
            raise BadRequest("input 'prompt': videos are not supported, give one image")
        count = prompt.count(IMAGE_PAD)
        if count != 1:
            raise BadRequest(f"input 'prompt' must contain exactly one {IMAGE_PAD} (inside <|vision_start|>..."
                             f"<|vision_end|>), found {count}")

    def _encode(self, prompt, picture):
        batch = self.processor(images=[picture], text=[prompt], return_tensors="np")
        grid = np.asarray(batch["image_grid_thw"], dtype=np.int64)  # [1, 3] patch grid (t, h, w)
        num_visual = int(np.prod(grid[0])) // self.vision_config.spatial_merge_size ** 2
        bound = self.cfg["max_visual_tokens"]
        if num_visual > bound:
            raise BadRequest(f"input 'image' gives {num_visual} visual tokens, over the artifact's capacity of "
                             f"{bound} (max_pixels {self.cfg['max_pixels']})")
        ids = np.asarray(batch["input_ids"], dtype=np.int64)
        start = self._visual_span_start(ids[0], num_visual)
        positions, delta = self.rope_index(self.hf_config, ids, np.asarray(batch["mm_token_type_ids"]), grid)
        pixels = np.asarray(batch["pixel_values"], dtype=np.float32)
        return ids, pixels, grid, start, num_visual, positions, int(delta[0])

    def _visual_span_start(self, ids, num_visual):
        """The <|image_pad|> run: contiguous, between <|vision_start|> and <|vision_end|>, text after it."""
        where = np.flatnonzero(ids == self.hf_config.image_token_id)
        if len(where) != num_visual or where[-1] - where[0] != num_visual - 1:
            raise BadRequest(f"input 'prompt' must expand to one contiguous span of {num_visual} image tokens")
        start, end = int(where[0]), int(where[-1]) + 1
        if start == 0 or ids[start - 1] != self.hf_config.vision_start_token_id or end >= len(ids) \
                or ids[end] != self.hf_config.vision_end_token_id:
            raise BadRequest(f"input 'prompt': {IMAGE_PAD} must sit between <|vision_start|> and <|vision_end|>")
        if end + 1 >= len(ids):
            raise BadRequest("input 'prompt' needs at least one text token after the image "
                             "(<|vision_end|> is last)")
        return start

    def _generate(self, prompt, picture, max_new):
        ids, pixels, grid, start, num_visual, positions, delta = self._encode(prompt, picture)
        self._check_capacity(ids, max_new)
        vision_feeds = {"pixel_values": pixels, "image_grid_thw": grid,
                        **self.vision_index_inputs(grid, self.vision_config)}
        features = self._call("vision", vision_feeds, ["image_features"])["image_features"]  # [1, N_v, d]
        embeds = self._call("embed", {"input_ids": ids, "image_features": features}, ["inputs_embeds"])
        out = self._call("prefill", {"inputs_embeds": embeds["inputs_embeds"],
                                     "visual_start": np.array([start], dtype=np.int64),
                                     "position_ids": positions,  # [3, 1, L]
                                     "visual_span": np.arange(start, start + num_visual, dtype=np.int64)},
                         ["logits", *self.kv_out])
        first = ids.shape[1] + delta  # the unrouted model's first decode position (rope_delta rule)
        return self._greedy(out, features, max_new,
                            lambda step: np.full((3, 1, 1), first + step - 1, dtype=np.int64))  # [3, B, 1]
