"""Greedy generation over any :class:`~engines.base.GraphBackend`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import GraphBackend


@dataclass
class Generation:
    prompt_token_ids: np.ndarray  # [B, T]
    generated: list[list[int]]  # per sample, truncated after EOS when stopping at EOS
    prefill_logits: np.ndarray  # [B, vocab]
    selections: list[np.ndarray]  # per decision layer [B, k_s] original visual indices
    cache_lengths: list[int]  # tokens per layer in the KV cache after prefill


def greedy_generate(
    backend: GraphBackend,
    input_ids: np.ndarray,
    pixel_values: np.ndarray,
    visual_start: int,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    *,
    image_grid_thw: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    rope_delta: np.ndarray | None = None,
) -> Generation:
    """Prefill once (routing decided there), then decode one token at a time over the compact caches.

    M-RoPE families (Qwen2.5-VL) also pass ``image_grid_thw`` [B, 3], the prompt's ``position_ids``
    [3, B, T] and ``rope_delta`` [B]; their N_v is the vision output's length, per batch.
    """
    started = start_generation(backend, input_ids, pixel_values, visual_start, image_grid_thw=image_grid_thw,
                               position_ids=position_ids, rope_delta=rope_delta)
    return finish_generation(backend, started, max_new_tokens, eos_token_id)


@dataclass
class Started:
    """A prefilled batch waiting for its decode steps (see :func:`start_generation`)."""
    input_ids: np.ndarray  # [B, T]
    prefill: object  # engines.base.Prefill
    no_image: np.ndarray  # [B, 0, d]: decode tokens are text only
    rope_delta: np.ndarray | None


def start_generation(backend: GraphBackend, input_ids, pixel_values, visual_start: int, *,
                     image_grid_thw=None, position_ids=None, rope_delta=None) -> Started:
    """Vision, embed and prefill of one batch (routing is decided here). Split from the decode loop so
    a caller can prefill every batch before decoding any: with a low-memory backend the prefill and decode
    graphs, which hold the same weights, are then each opened once."""
    if image_grid_thw is None:
        features = backend.vision(pixel_values)
        pre = backend.prefill(backend.embed(input_ids, features), visual_start)
    else:
        features = backend.vision(pixel_values, image_grid_thw)  # [B, N_v, d]
        pre = backend.prefill(backend.embed(input_ids, features), visual_start, position_ids,
                              num_visual=features.shape[1])
    no_image = np.zeros((input_ids.shape[0], 0, features.shape[-1]), dtype=features.dtype)  # [B, 0, d]
    return Started(input_ids, pre, no_image, rope_delta)


def finish_generation(backend: GraphBackend, started: Started, max_new_tokens: int,
                      eos_token_id: int | None = None) -> Generation:
    """Greedy decode steps after :func:`start_generation`, one token at a time over the compact caches."""
    (b, t), pre = started.input_ids.shape, started.prefill
    lengths = backend.cache_lengths(pre.cache)
    tokens = np.argmax(pre.logits, axis=-1)  # [B]
    steps, cache = [tokens], pre.cache
    done = tokens == eos_token_id if eos_token_id is not None else np.zeros(b, bool)
    for step in range(1, max_new_tokens):
        if done.all():
            break
        embeds = backend.embed(tokens[:, None].astype(np.int64), started.no_image)  # [B, 1, d]
        positions = decode_positions(t, step - 1, b, started.rope_delta)
        logits, cache = backend.decode(embeds, positions, cache)
        tokens = np.argmax(logits, axis=-1)
        steps.append(tokens)
        if eos_token_id is not None:
            done |= tokens == eos_token_id
    return Generation(started.input_ids, _truncate(np.stack(steps, 1), eos_token_id), pre.logits,
                      pre.selections, lengths)


def generate_inputs(backend: GraphBackend, inputs, max_new_tokens: int, eos_token_id: int | None = None):
    """:func:`greedy_generate` on an ``exporter.families.PromptInputs``."""
    return finish_generation(backend, start_inputs(backend, inputs), max_new_tokens, eos_token_id)


def start_inputs(backend: GraphBackend, inputs) -> Started:
    """:func:`start_generation` on an ``exporter.families.PromptInputs``."""
    return start_generation(backend, inputs.input_ids, inputs.pixel_values, inputs.visual_start,
                            image_grid_thw=inputs.image_grid_thw, position_ids=inputs.position_ids,
                            rope_delta=inputs.rope_delta)


def decode_positions(prompt_length: int, step: int, batch: int, rope_delta=None) -> np.ndarray:
    """Position ids of decode step ``step`` (0-based): ``L + step``, [B, 1].

    With M-RoPE, ``+ rope_delta`` ([B], (max prompt position + 1) - L) on all three rows, [3, B, 1]:
    exactly the unrouted model's decode positions (SPEC section 9).
    """
    base = np.full((batch, 1), prompt_length + step, dtype=np.int64)  # [B, 1]
    if rope_delta is None:
        return base
    shifted = base + np.asarray(rope_delta, dtype=np.int64).reshape(batch, 1)  # [B, 1]
    return np.ascontiguousarray(np.broadcast_to(shifted[None], (3, batch, 1)))  # [3, B, 1]


def _truncate(ids: np.ndarray, eos: int | None) -> list[list[int]]:
    out = []
    for row in ids.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        out.append(row)
    return out
