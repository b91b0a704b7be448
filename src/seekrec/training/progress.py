"""Progress as periodic log lines, for training whose stderr is not a terminal (a log file, nohup, CI).

tqdm draws its bar only on a terminal; a long run written to a file would otherwise be silent between
validations. ``ProgressLog`` says the same things (step/total, rate, ETA) once every ``every_s`` seconds.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta

log = logging.getLogger(__name__)
EVERY_S = 30.0  # seconds between two progress lines


class ProgressLog:
    """Counts steps of one ``total``-step stretch and logs ``desc: step i/total (p%), r steps/s, ETA t``
    at most once every ``every_s`` seconds (``clock``: injectable for tests)."""

    def __init__(self, desc: str, total: int, *, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log) -> None:
        self.desc, self.total, self.clock, self.logger = desc, total, clock, logger
        self.every_s = EVERY_S if every_s is None else every_s
        self.done = 0
        self.start = self.last = clock()

    def update(self, n: int = 1, **postfix: str) -> None:
        """``n`` more steps done; ``postfix``: values shown after the rate (``loss="4.1"``)."""
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.logger.info("%s", self.line(now, postfix))

    def line(self, now: float, postfix: dict[str, str] | None = None) -> str:
        """The progress line as of ``now``."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        eta = str(timedelta(seconds=round(left))) if math.isfinite(left) else "?"
        extra = "".join(f", {k} {v}" for k, v in (postfix or {}).items())
        pct = 100 * self.done / self.total if self.total else 100.0
        return f"{self.desc}: step {self.done}/{self.total} ({pct:.0f}%), {rate:.2f} steps/s{extra}, ETA {eta}"


def progress_log(desc: str, total: int, enabled: bool) -> ProgressLog | None:
    """A ``ProgressLog`` where tqdm shows nothing: ``enabled`` (main rank) and stderr is not a terminal."""
    return ProgressLog(desc, total) if enabled and not sys.stderr.isatty() else None
