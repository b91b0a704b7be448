"""Pure CTR metric functions over impressions: labels 0/1, scores (any monotone score) or probabilities.

* ``auc``: ROC AUC, rank-based with ties counted one half (from ``metrics``, the one implementation).
* ``gauc``: per-user AUC weighted by the user's impressions (Zhou et al. 2018, DIN), which drops the
  between-user part of AUC that a ranker cannot act on; users with one class only are skipped.
* ``logloss``: mean binary cross-entropy with probabilities clipped away from 0 and 1.
* ``ece``: expected calibration error over equal-width probability bins.
"""

from __future__ import annotations

import numpy as np

from seekrec.evaluation.metrics import binary_pairs, auc, logloss

__all__ = ["auc", "ctr_report", "ece", "gauc", "logloss"]


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """``sum_u n_u AUC_u / sum_u n_u`` over users whose impressions hold both a click and a non-click.

    ``users``, ``labels``, ``scores`` are ``[M]`` (one entry per impression, any order).
    """
    labels, scores = binary_pairs(labels, scores)
    users = np.asarray(users).ravel()
    if users.shape != labels.shape:
        raise ValueError(f"users {users.shape} and labels {labels.shape} differ in length")
    order = np.argsort(users, kind="stable")
    users, labels, scores = users[order], labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    total, weight = 0.0, 0
    for start, end in zip(starts, ends, strict=True):
        user_labels = labels[start:end]
        positives = int(user_labels.sum())
        if 0 < positives < len(user_labels):
            total += (end - start) * auc(user_labels, scores[start:end])
            weight += end - start
    if weight == 0:
        raise ValueError("gAUC needs at least one user with both a positive and a negative impression")
    return total / weight


def ece(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """``sum_b (n_b / M) |mean label_b - mean prob_b|`` over ``n_bins`` equal-width bins of ``[0, 1]``.

    0 for perfect calibration; bins are right-closed except the first, which also holds 0.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    labels, probs = binary_pairs(labels, probs)
    if np.any((probs < 0) | (probs > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    bins = np.clip(np.ceil(probs * n_bins).astype(np.int64) - 1, 0, n_bins - 1)  # [M], bin b = (b/n, (b+1)/n]
    label_sums = np.bincount(bins, weights=labels, minlength=n_bins)  # [n_bins]
    prob_sums = np.bincount(bins, weights=probs, minlength=n_bins)
    # n_b / M * |sum_b(y) / n_b - sum_b(p) / n_b| = |sum_b(y) - sum_b(p)| / M
    return float(np.abs(label_sums - prob_sums).sum() / len(labels))


def ctr_report(
    labels: np.ndarray, probs: np.ndarray, users: np.ndarray | None = None, *, n_bins: int = 10
) -> dict[str, float]:
    """``auc``, ``logloss``, ``ece`` (and ``gauc`` when ``users`` are given) of probabilities ``probs``."""
    report = {"auc": auc(labels, probs), "logloss": logloss(labels, probs), "ece": ece(labels, probs, n_bins)}
    if users is not None:
        report["gauc"] = gauc(users, labels, probs)
    return report
