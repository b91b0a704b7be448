"""Is model A better than model B on the same users? A paired comparison of per-user metrics.

With a few hundred test users (ml-100k: 943) and one seed, a mean NDCG@10 gap of a few percent is
within noise. Comparing per user removes the variation between users that both models share: each
model's seeds are first averaged per user (seed noise shrinks, every user counts once), then the
per-user differences A - B give the mean difference, its standard error, a t confidence interval, a
paired t-test and a Wilcoxon signed-rank test.

Every user of every seed must be present: the seeds of one model, and the two models, must evaluate
the same user set (order may differ; users are aligned by id).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


def ndcg_per_user(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``[M]`` NDCG@k of each user from 0-based target ranks ``[M]``: ``1 / log2(rank + 2)`` if
    ``rank < k``, else 0 (one relevant item; the mean is ``metrics.ndcg(ranks, k)``)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    if np.any(~np.isfinite(ranks)) or np.any(ranks < 0):
        raise ValueError("ranks must be finite and >= 0")
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


@dataclass(frozen=True)
class PerUser:
    """One run's metric per user: ``values[i]`` belongs to user ``users[i]``.

    For ``evaluation.ranking.evaluate`` on an ``EvalSet`` that is ``PerUser(eval_set.users,
    ndcg_per_user(result.ranks))``: ranks follow ``eval_set.users`` in order.
    """

    users: np.ndarray  # [M] user ids, unique
    values: np.ndarray  # [M] float metric

    def __post_init__(self) -> None:
        users, values = np.asarray(self.users), np.asarray(self.values, dtype=np.float64)
        if users.ndim != 1 or values.shape != users.shape:
            raise ValueError(f"users {users.shape} and values {values.shape} must be 1-D of the same length")
        if users.size == 0:
            raise ValueError("no users: nothing was evaluated")
        if len(np.unique(users)) != len(users):
            raise ValueError("users must be unique: each user is evaluated once per run")
        if np.any(~np.isfinite(values)):
            raise ValueError("values must be finite")
        object.__setattr__(self, "users", users)
        object.__setattr__(self, "values", values)

    def sorted(self) -> PerUser:
        """The same values ordered by user id."""
        order = np.argsort(self.users, kind="stable")
        return PerUser(self.users[order], self.values[order])


def seed_mean(runs: Sequence[PerUser], name: str = "model") -> PerUser:
    """Each user's value averaged over ``runs`` (one per seed), ordered by user id; every run must
    evaluate the same users (``name`` goes into the error)."""
    if not runs:
        raise ValueError(f"{name}: no runs to average")
    ordered = [r.sorted() for r in runs]
    users = ordered[0].users
    for i, r in enumerate(ordered[1:], start=1):
        if not np.array_equal(r.users, users):
            raise ValueError(f"{name}: run {i} evaluates other users than run 0 "
                             f"({_user_diff(users, r.users)}); evaluate every seed on the same split")
    return PerUser(users, np.mean([r.values for r in ordered], axis=0))


@dataclass(frozen=True)
class PairedComparison:
    """A - B over the same users, each model's seeds averaged per user first.

    ``diff`` is the mean per-user difference (= ``mean_a - mean_b``), ``std_err`` its standard error,
    ``ci_low``/``ci_high`` the ``confidence`` t interval. When every difference is exactly zero (the same
    model twice) the difference carries no evidence: ``t_pvalue`` and ``wilcoxon_pvalue`` are 1.0 and the
    interval is [0, 0], not scipy's NaN. When every difference is the same non-zero number the t-test
    p-value is 0.0. ``ratio`` is ``mean_a / mean_b`` (inf if ``mean_b`` is 0 and ``mean_a`` is not, NaN if
    both are 0).
    """

    name_a: str
    name_b: str
    n_users: int
    n_seeds_a: int
    n_seeds_b: int
    mean_a: float
    mean_b: float
    diff: float
    std_err: float
    ci_low: float
    ci_high: float
    confidence: float
    t_pvalue: float
    wilcoxon_pvalue: float
    wilcoxon_zero_method: str
    ratio: float
    n_a_better: int  # users whose seed-averaged value is higher under A
    n_b_better: int
    n_tied: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_comparison(a: Sequence[PerUser], b: Sequence[PerUser], *, name_a: str = "a", name_b: str = "b",
                      confidence: float = 0.95, zero_method: str = "zsplit") -> PairedComparison:
    """Compare model A (``a``: one ``PerUser`` per seed) with model B over the same users.

    The seeds of each model are averaged per user, users aligned by id (ValueError if the user sets
    differ), then the per-user differences A - B are tested: paired t-test (``scipy.stats.ttest_rel``)
    and Wilcoxon signed-rank (``scipy.stats.wilcoxon``). Most users tie on NDCG@10 (neither model ranks
    their item in the top 10), so ``zero_method`` defaults to ``"zsplit"``: ties stay in the ranking and
    count half for each side instead of being dropped (``"pratt"`` and ``"wilcox"`` are scipy's others).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if zero_method not in ("zsplit", "pratt", "wilcox"):
        raise ValueError(f"zero_method must be 'zsplit', 'pratt' or 'wilcox', got {zero_method!r}")
    mean_a, mean_b = seed_mean(a, name_a), seed_mean(b, name_b)
    if not np.array_equal(mean_a.users, mean_b.users):
        raise ValueError(f"{name_a} and {name_b} evaluate other users ({_user_diff(mean_a.users, mean_b.users)}); "
                         "compare runs on the same dataset and split")
    if len(mean_a.users) < 2:
        raise ValueError("a paired test needs at least 2 users")
    x, y = mean_a.values, mean_b.values
    d = x - y  # [M]
    n = len(d)
    diff = float(d.mean())
    std_err = float(d.std(ddof=1) / math.sqrt(n))
    if std_err == 0.0:  # every difference equal: scipy would return NaN (or a precision warning)
        t_p = 1.0 if diff == 0.0 else 0.0
        half = 0.0
    else:
        t_p = float(stats.ttest_rel(x, y).pvalue)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std_err)
    if not np.any(d):
        w_p = 1.0
    else:
        w_p = float(stats.wilcoxon(x, y, zero_method=zero_method).pvalue)
    ma, mb = float(x.mean()), float(y.mean())
    ratio = ma / mb if mb != 0 else (math.inf if ma != 0 else math.nan)
    return PairedComparison(
        name_a=name_a, name_b=name_b, n_users=n, n_seeds_a=len(a), n_seeds_b=len(b), mean_a=ma, mean_b=mb,
        diff=diff, std_err=std_err, ci_low=diff - half, ci_high=diff + half, confidence=confidence,
        t_pvalue=t_p, wilcoxon_pvalue=w_p, wilcoxon_zero_method=zero_method, ratio=ratio,
        n_a_better=int((d > 0).sum()), n_b_better=int((d < 0).sum()), n_tied=int((d == 0).sum()),
    )


def _user_diff(left: np.ndarray, right: np.ndarray) -> str:
    only_left, only_right = np.setdiff1d(left, right), np.setdiff1d(right, left)
    return (f"{len(only_left)} only in the first, e.g. {only_left[:3].tolist()}; "
            f"{len(only_right)} only in the second, e.g. {only_right[:3].tolist()}")
