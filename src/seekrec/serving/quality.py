"""The quality of what the server served, from a bounded window of its recent lists.

On the request path only two cheap things happen: a served list is remembered (``served``: an
append to a bounded ordered dict) and a feedback event that names a remembered list's request id is
matched to it (``attribute``: one dict lookup), which the metrics count per arm at once. Everything
heavier (catalogue coverage, popularity of served items, share of new items, calibration of the
predicted click probabilities) is computed by ``summarise`` when Prometheus scrapes, on a copy of the
window, in a worker thread.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from seekrec.data.vocab import Catalog
from seekrec.evaluation.monitoring import calibration_mape, catalog_coverage, popularity_percentiles

WINDOW_LISTS = 20_000  # served lists remembered (for attribution, and the scrape-time summaries)
NEW_ITEM_MAX_EVENTS = 5  # an item with fewer training interactions in the serving version counts as new
CALIBRATION_EDGES = np.linspace(0.1, 0.9, 9)  # ten bins of predicted click probability
CALIBRATION_SETTLE_S = 60.0  # lists younger than this may still get clicks: not yet in the calibration
CALIBRATION_MIN_SLOTS = 50  # a bin with fewer served slots is too noisy to count in the MAPE
OUTCOME_TYPES = ("click", "purchase")  # event types counted by name; others as "other" (bounded labels)


def outcome_type(event_type: str) -> str:
    """The ``event_type`` label of an attributed event: a known outcome, or ``other``."""
    return event_type if event_type in OUTCOME_TYPES else "other"


@dataclass
class ServedRecord:
    """One list as shown: its model arm, raw item ids, the ranker's click probabilities (None when the
    arm's scores are not calibrated probabilities), when, and which positions were clicked since."""

    arm: str
    items: tuple[str, ...]
    probabilities: tuple[float, ...] | None
    time: float
    clicked: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class ArmQuality:
    """One arm's scrape-time summary (NaN where the window holds nothing to measure)."""

    coverage: float  # share of the arm's catalogue served at least once in the window
    popularity: float  # mean popularity percentile of served items (1: the most popular item)
    new_share: float  # share of served slots holding an item with < NEW_ITEM_MAX_EVENTS training interactions
    predicted_ctr: float  # mean predicted click probability of settled calibrated slots
    observed_ctr: float  # their observed click rate
    mape: float  # calibration MAPE over bins of predicted probability


class ServedWindow:
    """The last ``size`` served lists by request id, and the clicks attributed to them."""

    def __init__(self, size: int = WINDOW_LISTS, clock: Callable[[], float] = time.time) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.clock = size, clock
        self._lists: OrderedDict[str, ServedRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def served(self, request_id: str, arm: str, items: Sequence[str], probabilities: Sequence[float] | None) -> None:
        """Remember a list (the oldest is forgotten past ``size``)."""
        self._lists[request_id] = ServedRecord(arm, tuple(items), None if probabilities is None else
                                               tuple(probabilities), self.clock())
        if len(self._lists) > self.size:
            self._lists.popitem(last=False)

    def attribute(self, request_id: str, item_id: str, event_type: str) -> str | None:
        """The arm of the remembered list ``request_id`` if it showed ``item_id`` (a click also marks the
        position), else None: events for lists this server did not serve, or forgot, are not counted."""
        record = self._lists.get(request_id)
        if record is None or item_id not in record.items:
            return None
        if event_type == "click":
            record.clicked.add(record.items.index(item_id))
        return record.arm

    def snapshot(self) -> list[ServedRecord]:
        """The window's records for ``summarise`` in a worker thread: a cheap list copy on the event loop. Their
        click sets may still grow meanwhile; ``summarise`` only tests membership, which is safe."""
        return list(self._lists.values())


def summarise(records: Sequence[ServedRecord], arm: str, catalog: Catalog, settled_before: float) -> ArmQuality:
    """``arm``'s quality over ``records`` (a ``snapshot``). ``catalog``: the arm's serving version's (its
    interaction counts rank popularity). Calibration counts only lists served before ``settled_before``:
    clicks on younger lists may still be on their way, and counting them would read as over-prediction."""
    mine = [r for r in records if r.arm == arm]
    nan = float("nan")
    if not mine:
        return ArmQuality(nan, nan, nan, nan, nan, nan)
    n_items = len(catalog.items)
    ids = catalog.items.encode([item for r in mine for item in r.items])  # 0: not in this version's catalogue
    known = ids[ids > 0]
    coverage = catalog_coverage([known.tolist()], n_items) if n_items else nan
    popularity = float(popularity_percentiles(catalog.counts)[known].mean()) if len(known) else nan
    new_share = float(np.mean((ids == 0) | (catalog.counts[ids] < NEW_ITEM_MAX_EVENTS))) if len(ids) else nan
    settled = [r for r in mine if r.probabilities is not None and r.time < settled_before]
    probs = np.asarray([p for r in settled for p in r.probabilities or ()], dtype=np.float64)
    clicks = np.asarray([float(i in r.clicked) for r in settled for i in range(len(r.items))], dtype=np.float64)
    if not len(probs):
        return ArmQuality(coverage, popularity, new_share, nan, nan, nan)
    return ArmQuality(coverage, popularity, new_share, float(probs.mean()), float(clicks.mean()),
                      calibration_mape(probs, clicks, CALIBRATION_EDGES, CALIBRATION_MIN_SLOTS))
