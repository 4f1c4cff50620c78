"""A small progress display for long steps (stderr; quiet when asked)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, quiet: bool = False, stream=None):
        self.total, self.quiet, self.stream = total, quiet, stream or sys.stderr
        self.step = 0
        self.started = time.perf_counter()

    def __call__(self, label: str):
        return _Step(self, label)


class _Step:
    def __init__(self, progress: Progress, label: str):
        self.p, self.label = progress, label

    def __enter__(self):
        self.p.step += 1
        self.t0 = time.perf_counter()
        if not self.p.quiet:
            self.p.stream.write(f"[{self.p.step}/{self.p.total}] {self.label} ...")
            self.p.stream.flush()
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.p.quiet:
            status = "done" if exc_type is None else "failed"
            self.p.stream.write(f" {status} ({time.perf_counter() - self.t0:.1f} s)\n")
            self.p.stream.flush()
        return False
