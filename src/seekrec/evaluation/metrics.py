"""Pure metric functions.

Ranking metrics take 0-based ranks of the held-out target among all candidate items (rank 0 =
first). Ties are the evaluator's business: it counts them against the model before calling these.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Fraction of users whose target is in the top ``k``."""
    ranks = _ranks(ranks)
    return float(np.mean(ranks < k))


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    ranks = _ranks(ranks)
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking (no cut-off)."""
    ranks = _ranks(ranks)
    return float(np.mean(1.0 / (ranks + 1.0)))


def coverage(top_items: np.ndarray, n_items: int) -> float:
    """Fraction of the ``n_items`` catalog that appears in at least one recommended list.

    ``top_items`` is ``[M, K]`` of item ids in ``1..n_items``.
    """
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    distinct = np.unique(np.asarray(top_items).ravel())
    distinct = distinct[(distinct >= 1) & (distinct <= n_items)]
    return float(len(distinct) / n_items)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney statistic; tied scores count one half."""
    labels, scores = binary_pairs(labels, scores)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``)."""
    labels, probs = binary_pairs(labels, probs)
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    p = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _ranks(ranks: np.ndarray) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks given: nothing was evaluated")
    if np.any(~np.isfinite(ranks)) or np.any(ranks < 0):
        raise ValueError("ranks must be finite and >= 0")
    return ranks


def binary_pairs(labels: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 ``(labels, values)`` of a binary task, checked: same length, not empty, labels 0/1, no NaN."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    values = np.asarray(values, dtype=np.float64).ravel()
    if labels.shape != values.shape:
        raise ValueError(f"labels {labels.shape} and scores {values.shape} differ in length")
    if labels.size == 0:
        raise ValueError("empty input")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must be 0 or 1")
    if np.any(np.isnan(values)):
        raise ValueError("scores contain NaN")
    return labels, values
