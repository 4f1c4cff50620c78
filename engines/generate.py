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
) -> Generation:
    """Prefill once (routing decided there), then decode one token at a time over the compact caches."""
    b, t = input_ids.shape
    features = backend.vision(pixel_values)
    pre = backend.prefill(backend.embed(input_ids, features), visual_start)
    no_image = np.zeros((b, 0, features.shape[-1]), dtype=features.dtype)  # decode tokens are text only
    lengths = backend.cache_lengths(pre.cache)
    tokens = np.argmax(pre.logits, axis=-1)  # [B]
    steps, cache = [tokens], pre.cache
    done = tokens == eos_token_id if eos_token_id is not None else np.zeros(b, bool)
    for step in range(1, max_new_tokens):
        if done.all():
            break
        embeds = backend.embed(tokens[:, None].astype(np.int64), no_image)  # [B, 1, d]
        positions = np.full((b, 1), t + step - 1, dtype=np.int64)
        logits, cache = backend.decode(embeds, positions, cache)
        tokens = np.argmax(logits, axis=-1)
        steps.append(tokens)
        if eos_token_id is not None:
            done |= tokens == eos_token_id
    return Generation(input_ids, _truncate(np.stack(steps, 1), eos_token_id), pre.logits, pre.selections, lengths)


def _truncate(ids: np.ndarray, eos: int | None) -> list[list[int]]:
    out = []
    for row in ids.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos) + 1]
        out.append(row)
    return out
