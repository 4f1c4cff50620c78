"""Per-item progress for ``reroute eval`` on stderr.

On a terminal: one live line, redrawn in place. Otherwise (a log file, CI, a pipe): plain lines and no
carriage returns, one each time another 10% of a config's items is done or 30 s have passed since the
last line, whichever comes first, and a closing line per config.
"""

from __future__ import annotations

import sys
import time

PLAIN_STEPS = 10  # a plain line each 1/PLAIN_STEPS of a config's items (10%)
PLAIN_INTERVAL_S = 30.0  # at most this long without a plain line while items finish


class ItemProgress:
    def __init__(self, configs: int, items: int, quiet: bool = False, stream=None, clock=time.perf_counter):
        self.configs, self.items, self.quiet = configs, items, quiet
        self.stream = stream or sys.stderr
        self.clock = clock
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.number, self.done, self.label, self.t0 = 0, 0, "", clock()
        self.next_step, self.last_line = 1, self.t0

    def start(self, label: str) -> None:
        self.number += 1
        self.done, self.label, self.t0 = 0, label, self.clock()
        self.next_step, self.last_line = 1, self.t0
        self._draw()

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def config_seconds(self) -> float:
        return self.clock() - self.t0

    def _line(self) -> str:
        elapsed = self.config_seconds()
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = f", {(self.items - self.done) / rate:.0f} s left" if 0 < self.done < self.items and rate else ""
        return (f"[{self.number}/{self.configs}] {self.label}: {self.done}/{self.items} items "
                f"({rate:.2f} items/s{eta})")

    def _draw(self) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + self._line())
        elif self._plain_due():
            self.stream.write(self._line() + "\n")
        else:
            return
        self.stream.flush()

    def _plain_due(self) -> bool:
        """A plain line when another 1/PLAIN_STEPS of the items is done or PLAIN_INTERVAL_S passed (not at
        the start, nor at the end: :meth:`finish` closes the config with its own line). Integer arithmetic:
        done / items >= step / PLAIN_STEPS."""
        if self.done == 0 or self.done >= self.items:
            return False
        now = self.clock()
        reached = self.done * PLAIN_STEPS >= self.next_step * self.items
        if not reached and now - self.last_line < PLAIN_INTERVAL_S:
            return False
        while self.done * PLAIN_STEPS >= self.next_step * self.items:
            self.next_step += 1
        self.last_line = now
        return True

    def finish(self) -> None:
        if self.quiet:
            return
        self.stream.write(("\r\033[K" if self.live else "") + self._line() + f" in {self.config_seconds():.1f} s\n")
        self.stream.flush()
