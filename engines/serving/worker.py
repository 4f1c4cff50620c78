"""The generation thread behind ``reroute serve``: a queue of jobs, their deadlines, shutdown.

:class:`~engines.serving.pipeline.MicroBatcher` (equal-shape batches) and
:class:`~engines.serving.continuous.ContinuousBatcher` (a running decode batch)
differ only in how their ``_loop`` turns waiting jobs into batches.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

from .stats import ServeStats


class DeadlineExceeded(Exception):
    """A job whose deadline passed before the worker reached it."""


class GenerationWorker:
    """One generation thread fed by a queue of jobs: submit, deadline checks, shutdown. Subclasses set their
    own fields before calling ``__init__`` (it starts the thread) and implement ``_loop``."""

    def __init__(self, stats: ServeStats | None = None):
        self.stats = stats or ServeStats()
        self._pending: list = []  # jobs (engines.serving.pipeline.Job)
        self._cv = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # batch sizes run (for tests and logs)
        self._thread = threading.Thread(target=self._loop, name="reroute-generate", daemon=True)
        self._thread.start()

    def submit(self, job) -> Future:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self.stats.set_queue_length(len(self._pending))
            self._cv.notify()
        return job.future

    def _drop_expired(self) -> None:
        """Fail the waiting jobs whose deadline passed (caller holds the lock)."""
        now = time.monotonic()
        for job in [j for j in self._pending if j.expired(now)]:
            job.future.set_exception(DeadlineExceeded("the deadline passed while the request waited"))
        self._pending = [j for j in self._pending if not j.expired(now)]

    def _loop(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._pending:
                job.future.set_exception(RuntimeError("the server is shutting down"))
            self._pending = []
            self.stats.set_queue_length(0)
            self._cv.notify_all()
        self._thread.join(timeout=30)
