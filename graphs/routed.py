"""The routed language model (Llama / Qwen2 decoder): prefill with per-stage routing, decode over compact caches.

Export-friendly form (SPEC section 3, "stagewise"): one gather per stage and
one scatter back at the next decision layer; capacities are static per stage,
there is no data-dependent Python control flow, and every layer's KV cache
holds exactly the tokens that layer processed.

Mixed batches (eager and exported): prompts of different lengths are left-padded;
``attention_mask`` [B, T] marks the real tokens, ``positions`` [B, T] restart at 0
after each sample's padding, and ``visual_start`` is per sample ([B]). Padding
stays in front of every span, so each layer's cache has the same length for
every sample, and sample b's padding is the first ``pad_lengths[b]`` entries of
every layer's sequence and cache: prefill and decode mask them with that count alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import DecoderConfig
from .layers import DecoderLayer, RMSNorm, Rotary
from .mrope import gather_positions
from .capacity import StageCoefficients, stage_coefficients, stage_sizes
from .pool import (pool_gather, pool_gather_dynamic, pool_scatter, pool_scatter_dynamic, pool_select,
                   pool_select_dynamic)
from .schedule import DELETE, ROUTE, Schedule

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: ([B, KVH, n_l, hd], [B, KVH, n_l, hd])


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, vocab], last prompt position
    cache: KVCache
    selections: list[torch.Tensor]  # per decision layer: [B, k_s] original visual indices, ascending


class RoutedDecoder(nn.Module):
    """Llama decoder + final norm + lm_head, routed by a fixed :class:`Schedule`."""

    def __init__(self, cfg: DecoderConfig, schedule: Schedule):
        super().__init__()
        if schedule.num_layers != cfg.num_layers:
            raise ValueError(f"schedule is for {schedule.num_layers} layers, model has {cfg.num_layers}")
        self.cfg = cfg
        self.schedule = schedule
        self.rotary = Rotary(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._stage_at = {layer: s for s, layer in enumerate(schedule.layers)}
        self.coefficients: StageCoefficients | None = None  # set by with_dynamic_capacity

    def with_dynamic_capacity(self, bound: int) -> "RoutedDecoder":
        """Let :meth:`prefill` take N_v as a tensor (any N_v in 1..bound, k_s computed in the graph)."""
        self.coefficients = stage_coefficients(self.schedule, bound)
        return self

    @classmethod
    def from_hf(cls, hf_model, cfg: DecoderConfig, schedule: Schedule) -> "RoutedDecoder":
        """Share (not copy) the parameters of a transformers VLM (``hf_model.model.language_model`` + ``lm_head``)."""
        lm = hf_model.model.language_model
        with torch.device("meta"):
            model = cls(cfg, schedule)
        model.load_state_dict(_decoder_state(lm, hf_model.lm_head), assign=True, strict=True)
        model.rotary = Rotary(cfg)  # the buffer was created on meta
        return model.to(dtype=hf_model.lm_head.weight.dtype).eval()

    def _score_and_gather(self, layer: DecoderLayer, full, full_pos, v0, size, pad_lengths=None):
        """Score the pool at a decision layer, pick k_s, gather the compact sequence.

        size: (candidates P, capacity k) of this stage, ints (static) or int64 [1] tensors (N_v dynamic).
        Scoring needs input_layernorm and k_proj over every token; the kept tokens' rows of both are
        gathered with the sequence and handed to the layer, which would otherwise recompute them.
        """
        attn = layer.self_attn
        candidates, k = size
        h = layer.input_layernorm(full)  # [B, n, d]
        k_lin = attn.k_proj(h)  # [B, n, KVH * hd], before RoPE
        cos, sin = self.rotary(full_pos, h.dtype)  # ORIGINAL positions (1-D or M-RoPE)
        q_last = attn.query(h[:, -1:], cos[:, -1:], sin[:, -1:])[:, :, 0]  # [B, H, hd]
        keys = attn.rope_key(k_lin, cos, sin)  # [B, KVH, n, hd]
        scale = self.cfg.head_dim**-0.5
        if isinstance(k, torch.Tensor):  # N_v dynamic (exported Qwen graphs): no padding masks there
            selected = pool_select_dynamic(q_last, keys, v0, k=k, num_candidates=candidates, scale=scale)
        else:
            selected = pool_select(q_last, keys, v0, k=k, num_candidates=candidates, scale=scale,
                                   pad_lengths=pad_lengths)  # [B, k_s]

        def gather(t):  # [B, n, C] -> [B, n - P + k_s, C]
            return _gather(t, selected, v0, candidates)

        x_pos = gather_positions(gather, full_pos)  # [B, n - P + k_s] or [3, B, n - P + k_s]
        return selected, gather(full), x_pos, gather(h), gather(k_lin)

    def _stage_sizes(self, sch: Schedule, num_visual):
        """Per stage (candidates, k): from the schedule, or computed from the N_v tensor (dynamic export)."""
        if isinstance(num_visual, torch.Tensor):
            if self.coefficients is None:
                raise ValueError("a tensor N_v needs with_dynamic_capacity(bound) first")
            return stage_sizes(self.coefficients, num_visual)
        return [(sch.candidates(s), sch.k[s]) for s in range(len(sch.layers))]

    def prefill(self, inputs_embeds: torch.Tensor, visual_start, positions: torch.Tensor | None = None,
                schedule: Schedule | None = None, attention_mask: torch.Tensor | None = None,
                num_visual: torch.Tensor | None = None) -> PrefillOutput:
        """inputs_embeds: [B, T, d] with the visual span at [visual_start, visual_start + N_v).

        visual_start: one start (int / one-element tensor) or one per sample ([B]);
        positions: the prompt's position ids, [B, T] or [3, B, T] (M-RoPE); default 0..T-1;
        schedule: this batch's schedule when N_v differs from the one built in (same layers, k_s per N_v);
        attention_mask: [B, T], 0 at left padding;
        num_visual: N_v as an int64 tensor (exported graphs: read from a shape); every k_s is then
        computed from it in the graph (graphs/capacity.py) instead of taken from the schedule.
        """
        sch = self.schedule if schedule is None else schedule
        if sch.layers != self.schedule.layers:
            raise ValueError(f"schedule layers {sch.layers} differ from the model's {self.schedule.layers}")
        sizes = self._stage_sizes(sch, num_visual)
        b, t, _ = inputs_embeds.shape
        x = inputs_embeds
        # [B, T], or [3, B, T] with M-RoPE
        x_pos = torch.arange(t, device=x.device).expand(b, t) if positions is None else positions
        # left padding: sample b's first pad[b] tokens, at every stage (the padding precedes every span)
        pad = None if attention_mask is None else t - attention_mask.long().sum(1)  # [B]
        full = full_pos = selected = normed = k_lin = None
        selections: list[torch.Tensor] = []
        cache: KVCache = []
        for i, layer in enumerate(self.layers):
            stage = self._stage_at.get(i)
            if stage is not None:
                if stage > 0 and sch.action == ROUTE:
                    # scatter the stage's results back into the pool; deferred tokens stay frozen
                    full = _scatter(full, x, selected, visual_start, sizes[0][0])  # P = N_v when routing
                else:  # first decision, or deletion: the current sequence is the new candidate set
                    full, full_pos = x, x_pos
                selected, x, x_pos, normed, k_lin = self._score_and_gather(
                    layer, full, full_pos, visual_start, sizes[stage], pad)
                if sch.action == DELETE and stage > 0:
                    # survivors are indexed within the previous survivors: map back to original indices
                    selections.append(torch.gather(selections[-1], 1, selected))
                else:
                    selections.append(selected)
            cos, sin = self.rotary(x_pos, x.dtype)
            x, kv = layer(x, cos, sin, normed=normed, k_lin=k_lin, key_mask=_real_keys(pad, x.shape[1], x.device))
            normed = k_lin = None  # only a decision layer gets them precomputed
            cache.append(kv)
        logits = self.lm_head(self.norm(x[:, -1:]))[:, 0]  # [B, vocab]; the last token is always text
        return PrefillOutput(logits, cache, selections)

    def decode_step(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                    pad_lengths: torch.Tensor | None = None):
        """One greedy step. inputs_embeds: [B, 1, d]; positions of the new token: [B, 1], or [3, B, 1] (M-RoPE);
        pad_lengths: [B] padding entries at the front of every layer's cache (None: no padding)."""
        x = inputs_embeds
        cos, sin = self.rotary(positions, x.dtype)
        new_cache: KVCache = []
        for layer, past in zip(self.layers, cache):
            # [B, past + 1]: the padding slots of this layer's cache are masked
            key_mask = _real_keys(pad_lengths, past[0].shape[2] + 1, x.device)
            x, kv = layer(x, cos, sin, past, key_mask=key_mask)
            new_cache.append(kv)
        logits = self.lm_head(self.norm(x))[:, 0]  # [B, vocab]
        return logits, new_cache


def _real_keys(pad_lengths, n, device):
    """[B, n] bool, False at each sample's first pad_lengths[b] slots (left padding); None without padding."""
    if pad_lengths is None:
        return None
    return torch.arange(n, device=device)[None, :] >= pad_lengths.reshape(-1, 1)


def _gather(x, selected, v0, candidates):
    if isinstance(candidates, torch.Tensor):
        return pool_gather_dynamic(x, selected, v0, num_candidates=candidates)
    return pool_gather(x, selected, v0, num_candidates=candidates)


def _scatter(x, compact, selected, v0, candidates):
    if isinstance(candidates, torch.Tensor):
        return pool_scatter_dynamic(x, compact, selected, v0, num_candidates=candidates)
    return pool_scatter(x, compact, selected, v0, num_candidates=candidates)


def _decoder_state(language_model, lm_head) -> dict:
    state = {f"layers.{k[len('layers.'):]}": v for k, v in language_model.state_dict(keep_vars=True).items()
             if k.startswith("layers.")}
    state["norm.weight"] = language_model.norm.weight
    state["lm_head.weight"] = lm_head.weight
    return state
