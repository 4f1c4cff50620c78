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

import threading
import time

import numpy as np

from ..batching import RunningBatch
from .stats import ServeStats


class ContinuousBatcher:
    """The same interface as MicroBatcher (submit -> Future, close, stats, batches).

    ``finish(job, tokens)``: the answer of a finished job, e.g. (token ids, decoded text).
    """

    def __init__(self, backend, eos_token_id: int | None, max_batch: int, finish, stats: ServeStats | None = None):
        self.running = RunningBatch(backend, eos_token_id)
        self._max_batch, self._finish = max_batch, finish
        self.stats = stats or ServeStats()
        self._pending: list = []
        self._cv = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # decode batch size at every step (tests and logs)
        self._thread = threading.Thread(target=self._loop, name="reroute-generate", daemon=True)
        self._thread.start()

    def submit(self, job):
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self.stats.set_queue_length(len(self._pending))
            self._cv.notify()
        return job.future

    def _take_new(self) -> list:
        """Fail the waiting jobs whose deadline passed; take the oldest ones that fit (caller holds the lock)."""
        from .pipeline import DeadlineExceeded

        now = time.monotonic()
        for job in [j for j in self._pending if j.expired(now)]:
            job.future.set_exception(DeadlineExceeded("the deadline passed while the request waited"))
        self._pending = [j for j in self._pending if not j.expired(now)]
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
                    self._answer(self.running.admit(
                        new, [j.input_ids for j in new], np.concatenate([j.pixel_values for j in new]),
                        [j.visual_start for j in new], [j.max_new_tokens for j in new]))
                self.running.evict(lambda job: job.expired(time.monotonic()))  # nobody waits for them
                if len(self.running):
                    self.batches.append(len(self.running))
                    self.stats.record_batch(len(self.running))
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
        with self._cv:
            self._closed = True
            for job in self._pending:
                job.future.set_exception(RuntimeError("the server is shutting down"))
            self._pending = []
            self.stats.set_queue_length(0)
            self._cv.notify_all()
        self._thread.join(timeout=30)
        for job in self.running.evict(lambda job: True):
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
