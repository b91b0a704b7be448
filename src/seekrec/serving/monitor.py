"""``TrafficMonitor``: what the operator metrics summarise about live traffic (docs/operations.md).

The request path only appends to bounded windows and bumps counters here: the served lists (for click
attribution by request id, per-arm coverage, novelty and calibration), the requests' inputs and top
scores (drift), and the acknowledged events that no served version was trained on yet (freshness).
The summaries are computed at scrape time, on copies, in a worker thread (``refresh``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from seekrec.online.event_log import Event
from seekrec.serving.arms import ArmModel
from seekrec.serving.drift import DriftMonitor, DriftWindows, drift_psi
from seekrec.serving.freshness import PendingEvents
from seekrec.serving.metrics import ServingMetrics
from seekrec.serving.predictor import Predictor, Recommendation
from seekrec.serving.quality import (
    CALIBRATION_SETTLE_S,
    ArmQuality,
    ServedRecord,
    ServedWindow,
    outcome_type,
    summarise,
)


class Answered(Protocol):
    """An answered request (``state.Served``): the list and the arm that served it."""

    rec: Recommendation
    arm: str


class TrafficMonitor:
    """Bounded windows of recent traffic and the metrics computed from them; one per server."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self.window = ServedWindow()
        self.drift = DriftMonitor()
        self.pending = PendingEvents()

    def observe_stage(self, stage: str, seconds: float) -> None:
        """One lap of a request-path stage (``timing.StageClock``)."""
        self.metrics.stages.labels(stage=stage).observe(seconds)

    def ranked(self, arm: str, rec: Recommendation, history: Sequence[int]) -> None:
        """A personal list the model ranked: its input and top score feed the drift windows."""
        if not rec.fallback and rec.scores:
            self.drift.observe(arm, rec.model_version, history, rec.scores[0])

    def served(self, request_id: str, answered: Answered, model: ArmModel | None) -> None:
        """An answered list: its slots count for the arm's click rate, and it is remembered so that events naming
        ``request_id`` are attributed to it and for the served-list quality gauges. ``model`` is None for an
        interleaved list (two rankers, no one calibration)."""
        rec = answered.rec
        calibrated = model is not None and bool(getattr(model.predictor, "calibrated", False)) and not rec.fallback
        self.window.served(request_id, answered.arm, rec.item_ids, rec.scores if calibrated else None)
        self.metrics.served_items.labels(arm=answered.arm).inc(len(rec.item_ids))

    def acknowledged(self, events: Sequence[Event], offsets: Sequence[int]) -> None:
        """Events durably appended: they wait for a version trained on them, and those naming a remembered list
        count for its arm."""
        self.pending.acknowledged(offsets)
        for e in events:
            arm = self.window.attribute(e.request_id, e.item_id, e.event_type) if e.request_id else None
            if arm is not None:
                self.metrics.attributed.labels(arm=arm, event_type=outcome_type(e.event_type)).inc()

    def installed(self, predictors: Mapping[str, Predictor]) -> None:
        """Versions now served: the acknowledged events the newest one was trained through are fresh from now."""
        offsets = [o for o in (p.describe().get("offset") for p in predictors.values()) if isinstance(o, int)]
        if offsets:
            for age in self.pending.covered(max(offsets)):
                self.metrics.event_freshness.observe(age)

    async def refresh(self, arms: dict[str, ArmModel]) -> None:
        """The scrape-time summaries: pending events, and each arm's list quality and drift (worker thread)."""
        self.metrics.freshness_pending.set(len(self.pending))
        self.drift.forget(list(arms))
        quality, drift = await asyncio.to_thread(_summaries, arms, self.window.snapshot(), self.drift.windows())
        self.metrics.set_quality(quality, drift)


def _summaries(arms: dict[str, ArmModel], records: list[ServedRecord], windows: dict[str, DriftWindows],
               ) -> tuple[dict[str, ArmQuality], dict[str, dict[str, Any]]]:
    """Worker thread: each arm's served-list quality and drift PSI."""
    settled = time.time() - CALIBRATION_SETTLE_S
    quality = {arm: summarise(records, arm, m.predictor.catalog, settled) for arm, m in arms.items()}
    drift = {arm: drift_psi(*windows[arm], arms[arm].predictor.catalog) for arm in arms if arm in windows}
    return quality, drift
