"""Input and score drift per arm: PSI of recent requests against the serving version's reference.

Three features, each a histogram over fixed bins:

- ``input_popularity``: the popularity bucket (``log2(1 + training interactions)``) of every item in
  the requests' histories. Its reference comes with the version: the catalog's interaction counts are
  the training data's, so the training interactions' buckets are known from the version alone, exactly.
- ``history_length``: items per request history, and ``top_score``: the score of the first item.
  A version ships no distribution of either (the training histories are not in the registry, and
  scores depend on the version's weights), so their reference is the first ``BASELINE_REQUESTS``
  personal requests the version serves: drift then means "traffic moved since this version went
  live", which is what a frozen version needs watched; a version swapped in every few seconds
  by the online trainer has only little to compare, by design.

The request path only appends to bounded deques (``observe``); binning and PSI run at scrape time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seekrec.data.vocab import Catalog
from seekrec.evaluation.monitoring import histogram, psi

BASELINE_REQUESTS = 500  # the reference window of history length and top score after a swap
WINDOW_REQUESTS = 2_000  # the recent requests compared with the reference
MIN_REQUESTS = 100  # fewer recent requests than this: no PSI (too noisy to alert on)
HISTORY_EDGES = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
POPULARITY_EDGES = np.arange(1, 21)  # log2(1 + count) buckets 0..20+
SCORE_BINS = 10  # top-score bins: deciles of the baseline
Baseline = list[tuple[int, float]]  # (history length, top score) per request
Recent = list[tuple[int, float, tuple[int, ...]]]  # and the history's item ids
DriftWindows = tuple[Baseline, Recent]


def popularity_buckets(counts: np.ndarray) -> np.ndarray:
    """The bucket ``floor(log2(1 + count))`` of every item id in ``counts [N + 1]``."""
    return np.floor(np.log2(1.0 + np.asarray(counts, dtype=np.float64))).astype(np.int64)


@dataclass
class ArmDrift:
    """One version's reference and recent requests: ``(history length, top score, history item ids)``."""

    version: str
    baseline: list[tuple[int, float]] = field(default_factory=list)
    recent: deque[tuple[int, float, tuple[int, ...]]] = field(default_factory=lambda: deque(maxlen=WINDOW_REQUESTS))


class DriftMonitor:
    """Per arm: the reference of the version it serves and a window of its recent personal requests."""

    def __init__(self) -> None:
        self._arms: dict[str, ArmDrift] = {}

    def observe(self, arm: str, version: str, history: Sequence[int], top_score: float) -> None:
        """One personal request of ``arm`` served by ``version`` (``history``: the model's item ids). A new
        version starts a new reference; the first requests after it build the baseline."""
        state = self._arms.get(arm)
        if state is None or state.version != version:
            state = self._arms[arm] = ArmDrift(version)
        if len(state.baseline) < BASELINE_REQUESTS:
            state.baseline.append((len(history), top_score))
        else:
            state.recent.append((len(history), top_score, tuple(history)))

    def windows(self) -> dict[str, DriftWindows]:
        """``{arm: (baseline, recent)}`` copies for ``drift_psi`` (cheap, on the event loop; the PSI runs in a
        worker thread on the copies)."""
        return {arm: (list(state.baseline), list(state.recent)) for arm, state in self._arms.items()}

    def forget(self, arms: Sequence[str]) -> None:
        """Drop the arms no longer served."""
        for arm in [a for a in self._arms if a not in arms]:
            del self._arms[arm]


def drift_psi(baseline: Baseline, recent: Recent, catalog: Catalog) -> dict[str, float]:
    """``{feature: PSI}`` of the recent requests against the reference (empty until the baseline is full and
    ``MIN_REQUESTS`` recent requests are in). ``catalog``: the arm's serving version's."""
    if len(baseline) < BASELINE_REQUESTS or len(recent) < MIN_REQUESTS:
        return {}
    lengths = np.array([n for n, _, _ in recent])
    scores = np.array([s for _, s, _ in recent])
    ids = np.fromiter((i for _, _, h in recent for i in h), dtype=np.int64)
    ids = ids[ids < len(catalog.counts)]
    base_lengths = np.array([n for n, _ in baseline])
    base_scores = np.array([s for _, s in baseline])
    score_edges = np.unique(np.quantile(base_scores, np.linspace(0, 1, SCORE_BINS + 1)[1:-1]))
    buckets = popularity_buckets(catalog.counts)
    # the reference: every training interaction, in its item's bucket (the catalog counts them)
    reference = histogram(buckets[1:], POPULARITY_EDGES, weights=catalog.counts[1:])
    return {"input_popularity": psi(reference, histogram(buckets[ids], POPULARITY_EDGES)),
            "history_length": psi(histogram(base_lengths, HISTORY_EDGES), histogram(lengths, HISTORY_EDGES)),
            "top_score": psi(histogram(base_scores, score_edges), histogram(scores, score_edges))}
