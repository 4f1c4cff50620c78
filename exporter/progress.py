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

    def update(self, item: str) -> None:
        """One more item done within this step (a weight written): a counter, rewritten in place on a TTY."""
        self.count = getattr(self, "count", 0) + 1
        if not self.p.quiet and self.p.stream.isatty():
            self.p.stream.write(f"\r[{self.p.step}/{self.p.total}] {self.label} ... {self.count} ({item[-48:]})\033[K")
            self.p.stream.flush()

    def __exit__(self, exc_type, exc, tb):
        if not self.p.quiet:
            if getattr(self, "count", 0) and self.p.stream.isatty():
                self.p.stream.write(f"\r[{self.p.step}/{self.p.total}] {self.label} ... {self.count} tensors\033[K")
            status = "done" if exc_type is None else "failed"
            self.p.stream.write(f" {status} ({time.perf_counter() - self.t0:.1f} s)\n")
            self.p.stream.flush()
        return False
