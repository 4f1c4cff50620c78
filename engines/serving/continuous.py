"""Continuous batching for ``reroute serve``: requests join the running decode batch between steps.

One worker thread owns an :class:`engines.batching.RunningBatch`. Each turn it
takes as many waiting requests as there are free slots (up to ``max_batch``),
prefills them together as one left-padded batch, and they join the decode batch
at the next step, their KV caches left-padded to its length; then it runs one
decode step for everyone. A request that finishes (EOS or its own
``max_new_tokens``) leaves at once and its answer goes back, so a long answer
never holds a short one. Tokens equal each request's solo run
(tests/test_mixed_batch_onnx.py, tests/test_serve_traffic.py).

Fixed-resolution artifacts (LLaVA) only: their graphs take per-sample starts,
masks and cache padding. Dynamic-resolution ones keep the equal-shape
:class:`~engines.serving.pipeline.MicroBatcher`.
"""

from __future__ import annotations

import time

import numpy as np

from ..batching import RunningBatch
from .worker import GenerationWorker
from .stats import ServeStats


class ContinuousBatcher(GenerationWorker):
    """The same interface as MicroBatcher (submit -> Future, close, stats, batches: here the running-batch
    size at every decode step). ``finish(job, tokens)``: the answer of a finished job, e.g. (ids, text).
    """

    def __init__(self, backend, eos_token_id: int | None, max_batch: int, finish, stats: ServeStats | None = None):
        self.running = RunningBatch(backend, eos_token_id)
        self._max_batch, self._finish = max_batch, finish
        super().__init__(stats)

    def _take_new(self) -> list:
        """Fail the waiting jobs whose deadline passed; take the oldest ones that fit (caller holds the lock)."""
        self._drop_expired()
        free = self._max_batch - len(self.running)
        new, self._pending = self._pending[:free], self._pending[free:]
        self.stats.set_queue_length(len(self._pending))
        return new

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not len(self.running) and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                new = self._take_new()
            try:
                if new:
                    self.stats.record_batch(len(new))  # requests prefilled together
                    self._answer(self.running.admit(
                        new, [j.input_ids for j in new], np.concatenate([j.pixel_values for j in new]),
                        [j.visual_start for j in new], [j.max_new_tokens for j in new]))
                self.running.evict(lambda job: job.expired(time.monotonic()))  # nobody waits for them
                if len(self.running):
                    self.batches.append(len(self.running))
                    self.stats.record_decode_step(len(self.running))
                    self._answer(self.running.step())
            except Exception as exc:  # a failing step fails the requests in it, not the server
                for job in new + self.running.evict(lambda job: True):
                    if not job.future.done():
                        job.future.set_exception(exc)

    def _answer(self, finished) -> None:
        for seq in finished:
            if not seq.request.future.done():
                seq.request.future.set_result(self._finish(seq.request, seq.tokens))

    def close(self) -> None:
        super().close()
        for job in self.running.evict(lambda job: True):  # the worker has stopped: fail what it held
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
