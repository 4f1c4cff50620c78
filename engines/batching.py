"""Mixed-length batches and a running decode batch over a session backend (fixed-resolution graphs).

Left padding: prompts of different lengths share one prefill call, each padded at
the front to the longest; ``attention_mask`` marks the real tokens, positions restart
at 0 after the padding, and each sample's ``visual_start`` is its own span start.
Padding stays in front of every span (graphs/routed.py), so in every layer's cache
sample b's padding is its first ``pad[b]`` entries, and decode masks them by that
count (``pad_lengths``).

A running batch (continuous batching, as in vLLM / TensorRT-LLM in-flight batching):
requests join between decode steps, their caches left-padded to the batch's length,
and leave as soon as they finish. Every layer's cache of a request is its prompt's
text length plus its own visual tokens at that layer (a constant per layer, the same
for every request of one artifact), so one padding count per request aligns all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Padded:
    """A left-padded prefill batch."""

    embeds: np.ndarray  # [B, T, d]
    attention_mask: np.ndarray  # [B, T] int64, 0 at padding
    positions: np.ndarray  # [B, T] int64, 0.. from each sample's first real token
    visual_start: np.ndarray  # [B] int64, span start inside the padded row
    pad: np.ndarray  # [B] int64
    lengths: np.ndarray  # [B] int64, real prompt lengths


def left_pad(embeds: list[np.ndarray], visual_starts: list[int]) -> Padded:
    """One batch from per-prompt embeddings [1, T_b, d] whose spans start at ``visual_starts[b]``."""
    lengths = np.array([e.shape[1] for e in embeds], dtype=np.int64)
    t = int(lengths.max())
    pad = t - lengths
    rows = [np.concatenate([np.zeros((1, p, e.shape[2]), dtype=e.dtype), e], axis=1) for e, p in zip(embeds, pad)]
    slots = np.arange(t, dtype=np.int64)[None, :]  # [1, T]
    mask = (slots >= pad[:, None]).astype(np.int64)  # [B, T]
    positions = np.maximum(slots - pad[:, None], 0)  # [B, T]
    starts = pad + np.asarray(visual_starts, dtype=np.int64)
    return Padded(np.concatenate(rows), mask, positions, starts, pad, lengths)


def prefill_padded(backend, batch: Padded):
    """The backend's prefill over a left-padded batch (a :class:`~engines.base.Prefill`)."""
    return backend.prefill(batch.embeds, batch.visual_start, position_ids=batch.positions,
                           attention_mask=batch.attention_mask)


def pad_caches(cache: list, extra: int) -> list:
    """Prepend ``extra`` zero slots (padding, masked by pad_lengths) to every layer's keys and values."""
    if extra == 0:
        return cache
    width = ((0, 0), (0, 0), (int(extra), 0), (0, 0))
    return [(np.pad(k, width), np.pad(v, width)) for k, v in cache]


@dataclass
class Sequence:
    """One request in the running batch."""

    request: Any  # the caller's handle (a serving Job), returned with the answer
    max_new_tokens: int
    position: int  # position id of the next token fed to decode
    tokens: list[int] = field(default_factory=list)


class RunningBatch:
    """Sequences being decoded together: one cache per layer [B, KVH, L_l, hd], left-padded per row.

    ``admit`` prefills new requests (one padded batch) and adds them; ``step`` runs one decode step
    for everyone and returns the sequences that finished (EOS or their own max_new_tokens), which
    leave the batch at once.
    """

    def __init__(self, backend, eos_token_id: int | None = None):
        self.backend, self.eos = backend, eos_token_id
        self.sequences: list[Sequence] = []
        self.cache: list | None = None
        self.pad = np.zeros(0, dtype=np.int64)
        self.no_image = None  # [B, 0, d] features for the decode-step embed
        self.last_prefill = None  # the most recent admit's Prefill (tests compare its logits, selections)

    def __len__(self) -> int:
        return len(self.sequences)

    def _done(self, seq: Sequence) -> bool:
        return len(seq.tokens) >= seq.max_new_tokens or (self.eos is not None and seq.tokens[-1] == self.eos)

    def admit(self, requests: list, input_ids: list[np.ndarray], pixel_values: np.ndarray,
              visual_starts: list[int], max_new_tokens: list[int]) -> list[Sequence]:
        """Prefill new requests as one left-padded batch (input_ids [1, T_b] each, pixel_values [B, ...]);
        they join the decode batch. Returns those already finished after their first token."""
        features = self.backend.vision(pixel_values)  # [B, N_v, d]
        embeds = [self.backend.embed(ids, features[b : b + 1]) for b, ids in enumerate(input_ids)]
        batch = left_pad(embeds, visual_starts)
        pre = prefill_padded(self.backend, batch)
        self.last_prefill = pre
        self.no_image = np.zeros((1, 0, features.shape[-1]), dtype=features.dtype)
        first = np.argmax(pre.logits, axis=-1)
        new = [Sequence(r, m, int(length), [int(tok)])
               for r, m, length, tok in zip(requests, max_new_tokens, batch.lengths, first)]
        self._join(new, pre.cache, batch.pad)
        return self._leave()

    def _join(self, new: list[Sequence], cache: list, pad: np.ndarray) -> None:
        """Left-pad the shorter side's caches so every layer has one length, then stack the rows."""
        if self.cache is None or not self.sequences:
            self.sequences, self.cache, self.pad = list(new), cache, pad.astype(np.int64)
            return
        delta = self.cache[0][0].shape[2] - cache[0][0].shape[2]  # the same for every layer (module doc)
        old_cache, new_cache = pad_caches(self.cache, max(0, -delta)), pad_caches(cache, max(0, delta))
        self.cache = [(np.concatenate([ko, kn]), np.concatenate([vo, vn]))
                      for (ko, vo), (kn, vn) in zip(old_cache, new_cache)]
        self.pad = np.concatenate([self.pad + max(0, -delta), pad + max(0, delta)])
        self.sequences += new

    def step(self) -> list[Sequence]:
        """One decode step for every sequence; returns (and removes) those that finished."""
        if not self.sequences:
            return []
        tokens = np.array([[s.tokens[-1]] for s in self.sequences], dtype=np.int64)  # [B, 1]
        embeds = self.backend.embed(tokens, np.repeat(self.no_image, len(tokens), axis=0))  # [B, 1, d]
        positions = np.array([[s.position] for s in self.sequences], dtype=np.int64)  # [B, 1]
        logits, self.cache = self.backend.decode(embeds, positions, self.cache, pad_lengths=self.pad)
        for seq, tok in zip(self.sequences, np.argmax(logits, axis=-1)):
            seq.tokens.append(int(tok))
            seq.position += 1
        return self._leave()

    def evict(self, predicate) -> list:
        """Remove the sequences whose request satisfies ``predicate`` (e.g. past its deadline, or all of them
        after a failed step); returns their requests."""
        return [s.request for s in self._remove(lambda s: predicate(s.request))]

    def _leave(self) -> list[Sequence]:
        return self._remove(self._done)

    def _remove(self, leaving) -> list[Sequence]:
        """Remove the sequences ``leaving(seq)`` picks, and the padding every remaining row shares."""
        keep = [i for i, s in enumerate(self.sequences) if not leaving(s)]
        finished = [s for i, s in enumerate(self.sequences) if i not in keep]
        if not finished:
            return []
        self.sequences = [self.sequences[i] for i in keep]
        if not keep:
            self.cache, self.pad = None, np.zeros(0, dtype=np.int64)
            return finished
        index = np.array(keep)
        trim = int(self.pad[index].min())  # slots that are padding in every remaining row
        self.cache = [(k[index][:, :, trim:], v[index][:, :, trim:]) for k, v in self.cache]
        self.pad = self.pad[index] - trim
        return finished
