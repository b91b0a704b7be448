"""The Live page's figures over a recent window, computed from the server's own Prometheus metrics.

Prometheus keeps cumulative counters and histograms; a rate or a quantile "now" is the difference of two
readings. ``LiveWindow`` keeps the readings it took (one per call, at most one per ``min_gap_s``) and
answers for the span between the newest one and the one about ``window_s`` older, as ``rate()`` and
``histogram_quantile()`` over a range would, so the page shows what Grafana would without a Prometheus.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from seekrec.serving.metrics import ServingMetrics

RECOMMEND_ROUTE = "/recommend"


@dataclass(frozen=True)
class Reading:
    """Cumulative counts at ``t`` (monotonic seconds): ``/recommend`` latency and event freshness as
    ``(upper bound, cumulative count)`` buckets, and the events accepted."""

    t: float
    latency: tuple[tuple[float, float], ...]
    freshness: tuple[tuple[float, float], ...]
    events: float


@dataclass(frozen=True)
class WindowFigures:
    """Rates per second and quantiles in seconds over ``seconds``; None where nothing was observed."""

    seconds: float
    qps: float | None
    events_per_s: float | None
    latency_p50: float | None
    latency_p99: float | None
    freshness_p50: float | None
    freshness_p99: float | None


def buckets(histogram: Histogram, labels: dict[str, str] | None = None) -> tuple[tuple[float, float], ...]:
    """The cumulative ``(le, count)`` buckets of ``histogram``'s series with ``labels`` (empty: none yet)."""
    wanted = labels or {}
    found = []
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and all(sample.labels.get(k) == v for k, v in wanted.items()):
                found.append((float(sample.labels["le"]), sample.value))
    return tuple(sorted(found))


def total(counter: Counter) -> float:
    """The sum of ``counter``'s ``_total`` samples over every label set."""
    return sum(s.value for family in counter.collect() for s in family.samples if s.name.endswith("_total"))


def quantile(q: float, newer: Sequence[tuple[float, float]], older: Sequence[tuple[float, float]]) -> float | None:
    """``histogram_quantile(q, newer - older)``: linear within the bucket the rank falls in (the last finite
    bound when it falls in ``+Inf``); None when nothing was observed in between."""
    before = dict(older)
    counts = [(le, count - before.get(le, 0.0)) for le, count in newer]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_le, lower_count = le, count
    return lower_le


class LiveWindow:
    """Readings of ``metrics`` taken when the Live page asks, and the figures between two of them."""

    def __init__(self, metrics: ServingMetrics, window_s: float = 10.0, keep: int = 120,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics, self.window_s, self.clock = metrics, window_s, clock
        self._readings: deque[Reading] = deque(maxlen=keep)

    def read(self) -> Reading:
        m = self.metrics
        return Reading(self.clock(), buckets(m.latency, {"route": RECOMMEND_ROUTE}), buckets(m.event_freshness),
                       total(m.events))

    def figures(self) -> WindowFigures:
        """Take a reading and compare it with the oldest one still inside the window (or the newest before it)."""
        now = self.read()
        if not self._readings or now.t - self._readings[-1].t >= 0.5:  # two tabs polling do not crowd the deque
            self._readings.append(now)
        older = next((r for r in reversed(self._readings) if now.t - r.t >= self.window_s), None)
        if older is None:
            older = self._readings[0]
        span = now.t - older.t
        if span <= 0:
            return WindowFigures(0.0, None, None, None, None, None, None)
        count = (now.latency[-1][1] if now.latency else 0.0) - (older.latency[-1][1] if older.latency else 0.0)
        return WindowFigures(span, count / span, (now.events - older.events) / span,
                             quantile(0.5, now.latency, older.latency), quantile(0.99, now.latency, older.latency),
                             quantile(0.5, now.freshness, older.freshness),
                             quantile(0.99, now.freshness, older.freshness))
