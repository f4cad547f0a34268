"""A progress line on stderr for long loops (training steps, sweeps): :class:`Progress`.

Its own module so that the library (:mod:`lintrans.train`) and the scripts' harness
(:mod:`lintrans.cli` re-exports it) share it without the library importing the harness.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A minimal progress line on stderr: ``label [k/n] elapsed, mean rate unit/s, extra``.

    Writes a carriage-return-updated line on a terminal and one line per update otherwise (so CI
    logs stay readable); ``quiet=True`` silences it. ``unit`` labels the rate (``"steps"`` gives
    ``mean 12.50 steps/s``: the rate since the start, so that a recent rate in ``extra`` is not confused with it).
    """

    def __init__(self, total: int, label: str, quiet: bool = False, every: float = 0.5, unit: str = "steps"):
        self.total, self.label, self.quiet, self.every, self.unit = total, label, quiet, every, unit
        self.start = time.perf_counter()
        self.count = 0
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def update(self, n: int = 1, info: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        if self.quiet or (now - self._last < self.every and self.count < self.total):
            return
        self._last = now
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else float("inf")
        line = f"{self.label} [{self.count}/{self.total}] {elapsed:6.1f}s, mean {rate:.2f} {self.unit}/s" + (f", {info}" if info else "")
        if self._tty:
            sys.stderr.write("\r" + line + ("\n" if self.count >= self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
