"""Benchmarking dynamic-resolution models (Qwen2.5-VL): the prompt's M-RoPE positions and N_v, bound once.

The timing loop (exporter/bench/measure.py) calls ``prefill(embeds, visual_start)``
and ``decode(embeds, [[L + step]], cache)`` as for LLaVA; :class:`BoundPrompt`
wraps a backend so those calls carry this prompt's 3-D positions, its N_v
(dynamic graphs derive every k_s from it) and the ``rope_delta`` decode rule.
"""

from __future__ import annotations

import numpy as np


class BoundPrompt:
    def __init__(self, backend, inputs):
        """backend: a four-graph backend; inputs: the bench prompt's engines.inputs.PromptInputs."""
        self.backend, self.inputs = backend, inputs
        self.name = backend.name

    def prefill(self, inputs_embeds, visual_start):
        x = self.inputs
        return self.backend.prefill(inputs_embeds, visual_start, x.position_ids, num_visual=x.num_visual)

    def decode(self, inputs_embeds, positions, cache):
        """positions [B, 1] (L + step) -> [3, B, 1] with the prompt's rope_delta, as greedy generation does."""
        delta = np.asarray(self.inputs.rope_delta, dtype=np.int64).reshape(-1, 1)  # [B, 1]
        shifted = np.asarray(positions, dtype=np.int64) + delta
        return self.backend.decode(inputs_embeds, np.ascontiguousarray(np.broadcast_to(shifted[None],
                                                                                        (3, *shifted.shape))), cache)

    def cache_lengths(self, cache):
        return self.backend.cache_lengths(cache)

    def close(self):
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def per_image(schedule, num_visual: int | None):
    """The schedule as it runs on the bench image (k_s from its own N_v); unchanged for fixed N_v."""
    return schedule if num_visual is None else schedule.for_num_visual(num_visual)
