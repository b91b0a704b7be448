"""Pure functions behind the serving quality and drift gauges (``seekrec.serving.quality`` / ``drift``).

PSI, MAPE, catalogue coverage and popularity percentiles have no ready-made numpy/scipy call in the shape
monitoring needs (scipy has KL divergence, and PSI is the symmetric sum of the two KLs, which the tests
check; scikit-learn's MAPE has no calibration bins), so they are written here once, small and tested
against hand-computed values.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

PSI_EPSILON = 1e-4  # share given to an empty bin, so one empty bin does not make PSI infinite


def psi(reference: np.ndarray, observed: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two histograms over the same bins (counts or shares):
    ``sum((o - r) * ln(o / r))`` over bin shares. 0: the same distribution; > 0.2 is the usual
    "shifted" line. NaN when either histogram is empty."""
    ref, obs = np.asarray(reference, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    if ref.shape != obs.shape or ref.ndim != 1:
        raise ValueError(f"psi needs two 1-d histograms over the same bins, got shapes {ref.shape} and {obs.shape}")
    if ref.sum() <= 0 or obs.sum() <= 0:
        return float("nan")
    r = np.maximum(ref / ref.sum(), epsilon)
    o = np.maximum(obs / obs.sum(), epsilon)
    return float(np.sum((o - r) * np.log(o / r)))


def histogram(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or summed ``weights``) of ``values`` in ``len(edges) + 1`` bins: below ``edges[0]``, between
    edges, from ``edges[-1]`` up (open ends, so no value of a drifted stream falls outside every bin)."""
    return np.bincount(np.searchsorted(edges, np.asarray(values), side="right"), weights=weights,
                       minlength=len(edges) + 1)


def mape(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Mean absolute percentage error ``mean(|p - o| / |o|)`` (a share: 0.15 is 15%) over the pairs whose
    observation is not 0; NaN when there are none."""
    p, o = np.asarray(predicted, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    keep = o != 0
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(p[keep] - o[keep]) / np.abs(o[keep])))


def calibration_mape(predicted: np.ndarray, clicked: np.ndarray, edges: np.ndarray, min_count: int = 1) -> float:
    """MAPE of predicted against observed click rate per bin of predicted probability: the slots are grouped by
    ``histogram``'s bins of ``predicted``, and each bin with ``min_count`` slots or more compares its mean
    prediction with its share of clicks (bins without a click are left out: their percentage error is
    undefined)."""
    p, c = np.asarray(predicted, dtype=np.float64), np.asarray(clicked, dtype=np.float64)
    if p.shape != c.shape:
        raise ValueError(f"predicted and clicked must be aligned, got {p.shape} and {c.shape}")
    bins = np.searchsorted(edges, p, side="right")
    n = np.bincount(bins, minlength=len(edges) + 1)
    keep = n >= max(min_count, 1)
    mean_p = np.bincount(bins, weights=p, minlength=len(edges) + 1)[keep] / n[keep]
    rate = np.bincount(bins, weights=c, minlength=len(edges) + 1)[keep] / n[keep]
    return mape(mean_p, rate)


def catalog_coverage(lists: Iterable[Iterable[object]], n_items: int) -> float:
    """Share of the catalogue's ``n_items`` that appear in at least one of ``lists``."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    return len({item for items in lists for item in items}) / n_items


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """Per item ``1..N`` of ``counts [N + 1]`` (index 0: padding), its popularity as a percentile in [0, 1]:
    the share of the other items with fewer interactions (ties share the average), so 1 is the most
    popular item and 0 the least; index 0 gets 0."""
    c = np.asarray(counts, dtype=np.float64)[1:]
    out = np.zeros(len(c) + 1)
    if len(c) < 2:
        return out
    order = np.sort(c)
    below = np.searchsorted(order, c, side="left")
    ties = np.searchsorted(order, c, side="right") - below - 1
    out[1:] = (below + ties / 2) / (len(c) - 1)
    return out
