"""The four graph modules exported to ONNX (and run by the torch parity runner), flat tensors in and out.

Names follow the layout deployment runtimes use: ``past_key_values.{i}.key|value``
inputs and ``present.{i}.key|value`` outputs per layer; ``routing.{s}.indices``
debug outputs give the original visual indices selected at decision ``s``.
"""

from __future__ import annotations

import torch
from torch import nn

from .routed import RoutedDecoder


def kv_names(prefix: str, num_layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def routing_names(num_stages: int) -> list[str]:
    return [f"routing.{s}.indices" for s in range(num_stages)]


class PrefillGraph(nn.Module):
    """(inputs_embeds [B,T,d], visual_start [B], position_ids [B,T], attention_mask [B,T])
    -> logits [B,V], present.*, routing.*

    A mixed batch is left-padded: attention_mask is 0 at each sample's padding, position_ids restart at 0
    after it and visual_start is each sample's own span start (graphs/routed.py).
    """

    def __init__(self, decoder: RoutedDecoder):
        super().__init__()
        self.decoder = decoder

    def input_names(self) -> list[str]:
        return ["inputs_embeds", "visual_start", "position_ids", "attention_mask"]

    def output_names(self) -> list[str]:
        d = self.decoder
        return ["logits", *kv_names("present", d.cfg.num_layers), *routing_names(len(d.schedule.layers))]

    def forward(self, inputs_embeds, visual_start=None, position_ids=None, attention_mask=None):
        # unrouted schedules never read visual_start, and the exported graph then has no such input
        out = self.decoder.prefill(inputs_embeds, visual_start, position_ids, attention_mask=attention_mask)
        return (out.logits, *[t for kv in out.cache for t in kv], *out.selections)


class DynamicPrefillGraph(PrefillGraph):
    """Dynamic-resolution prefill (Qwen2.5-VL): any N_v up to the decoder's bound, M-RoPE positions in.

    (inputs_embeds [B,T,d], visual_start [1], position_ids [3,B,T], visual_span [N_v]) -> as PrefillGraph.
    ``visual_span`` holds the span's prompt indices (visual_start + 0..N_v-1); the graph reads only its
    length, so N_v and every k_s = max(1, floor(N_v r_s)) are shape-derived (graphs/capacity.py), which
    is what lets TensorRT bound TopK's K from the artifact's max_pixels.
    """

    def input_names(self) -> list[str]:
        return ["inputs_embeds", "visual_start", "position_ids", "visual_span"]

    def forward(self, inputs_embeds, visual_start, position_ids, visual_span):
        num_visual = torch._shape_as_tensor(visual_span)[0]  # 0-d int64, a Shape node when exported
        out = self.decoder.prefill(inputs_embeds, visual_start, position_ids, num_visual=num_visual)
        return (out.logits, *[t for kv in out.cache for t in kv], *out.selections)


class DecodeGraph(nn.Module):
    """(inputs_embeds [B,1,d], position_ids [B,1] or [3,B,1] (M-RoPE), [pad_lengths [B]], past_key_values.*)
    -> logits, present.*

    ``padded``: the graph takes ``pad_lengths``, the left padding at the front of every layer's cache of
    each sample (a mixed batch, or a request that joined a running batch); the fixed-resolution families'.
    """

    def __init__(self, decoder: RoutedDecoder, padded: bool = False):
        super().__init__()
        self.decoder = decoder
        self.padded = padded

    def input_names(self) -> list[str]:
        pad = ["pad_lengths"] if self.padded else []
        return ["inputs_embeds", "position_ids", *pad, *kv_names("past_key_values", self.decoder.cfg.num_layers)]

    def output_names(self) -> list[str]:
        return ["logits", *kv_names("present", self.decoder.cfg.num_layers)]

    def forward(self, inputs_embeds, position_ids, *past, **named_past):
        pad_lengths = None
        if named_past:  # called by input name (the parity runner)
            pad_lengths = named_past.get("pad_lengths")
            past = tuple(named_past[n] for n in kv_names("past_key_values", self.decoder.cfg.num_layers))
        elif self.padded:
            pad_lengths, past = past[0], past[1:]
        cache = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        logits, new = self.decoder.decode_step(inputs_embeds, position_ids, cache, pad_lengths)
        return (logits, *[t for kv in new for t in kv])


class VisionGraph(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def input_names(self):
        return ["pixel_values"]

    def output_names(self):
        return ["image_features"]

    def forward(self, pixel_values):
        return self.encoder(pixel_values)


class EmbedGraph(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embedding = embedding

    def input_names(self):
        return ["input_ids", "image_features"]

    def output_names(self):
        return ["inputs_embeds"]

    def forward(self, input_ids, image_features):
        return self.embedding(input_ids, image_features)
