"""``StageClock``: the seconds of each stage of one pass, for the serving stage histograms.

Layer-free on purpose: the pipeline (retrieve -> rank -> re-rank) and the serving predictors time their
stages with it, and only the server knows what to do with the laps (``seekrec_stage_duration_seconds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

StageObserver = Callable[[str, float], None]


class StageClock:
    """Laps of one pass: ``lap(stage)`` reports the seconds since the previous lap (or the start) to
    ``observe``; with no observer it only reads the clock. On a GPU a stage's kernels may still run when
    its lap is taken; they are then counted in the next stage that waits for them (a copy to the host)."""

    def __init__(self, observe: StageObserver | None) -> None:
        self.observe = observe
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.observe is not None:
            self.observe(stage, now - self.last)
        self.last = now
