"""Freshness as operators mean it: from an event's acknowledgement by this server to the first moment this
server serves a model version trained on it (the version's manifest ``extra["offset"]`` covers the event's
offset). The same measure as the demo's ``freshness_seconds``, observed live into a histogram."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

MAX_PENDING = 100_000  # acknowledged events awaiting a version; past it the oldest are dropped, and counted


class PendingEvents:
    """Offsets this server acknowledged, with their acknowledgement times, until a served version covers them."""

    def __init__(self, max_pending: int = MAX_PENDING, clock: Callable[[], float] = time.monotonic) -> None:
        self._pending: list[tuple[int, float]] = []  # a heap by offset
        self.max_pending, self.clock = max_pending, clock
        self.dropped = 0  # events forgotten before any version covered them

    def __len__(self) -> int:
        return len(self._pending)

    def acknowledged(self, offsets: Sequence[int]) -> None:
        """Events appended to the log and acknowledged to the client now."""
        now = self.clock()
        for offset in offsets:
            heapq.heappush(self._pending, (offset, now))
        while len(self._pending) > self.max_pending:
            heapq.heappop(self._pending)  # the lowest offset: the oldest event
            self.dropped += 1

    def covered(self, offset: int) -> list[float]:
        """A version trained through ``offset`` serves from now on: the seconds each pending event at or below
        it waited, and those events are done (a heap: concurrent batches may be acknowledged out of log order)."""
        now, ages = self.clock(), []
        while self._pending and self._pending[0][0] <= offset:
            ages.append(now - heapq.heappop(self._pending)[1])
        return ages
