"""Per-item progress for ``reroute eval`` on stderr: a live line on a terminal, one line per config otherwise."""

from __future__ import annotations

import sys
import time


class ItemProgress:
    def __init__(self, configs: int, items: int, quiet: bool = False, stream=None):
        self.configs, self.items, self.quiet = configs, items, quiet
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.number, self.done, self.label, self.t0 = 0, 0, "", time.perf_counter()

    def start(self, label: str) -> None:
        self.number += 1
        self.done, self.label, self.t0 = 0, label, time.perf_counter()
        self._draw()

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def config_seconds(self) -> float:
        return time.perf_counter() - self.t0

    def _line(self) -> str:
        elapsed = self.config_seconds()
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f", {(self.items - self.done) / rate:.0f} s left" if 0 < self.done < self.items and rate else ""
        return (f"[{self.number}/{self.configs}] {self.label}: {self.done}/{self.items} items "
                f"({rate:.2f} items/s{eta})")

    def _draw(self) -> None:
        if self.quiet or not self.live:
            return
        self.stream.write("\r\033[K" + self._line())
        self.stream.flush()

    def finish(self) -> None:
        if self.quiet:
            return
        self.stream.write(("\r\033[K" if self.live else "") + self._line() + f" in {self.config_seconds():.1f} s\n")
        self.stream.flush()
