"""Team-draft interleaving (Radlinski, Kurup, Joachims 2008): compare two rankers on the same impressions.

Both rankers' lists are merged into one shown list; each position remembers which ranker ("team")
contributed it, and clicks credit that team. Because every user sees both rankers at once, the
between-user variance cancels and the comparison needs far fewer users than an A/B test of CTR
(often an order of magnitude or more; Chapelle, Joachims, Radlinski, Yue 2012).

Units: one user's impressions share that user's taste, so they are not independent; a sign test
over impressions is anti-conservative (it rejects a true tie far more often than alpha when users
differ). ``interleaving_user_test`` is therefore the test to use: each user votes once, for the team
that won more of their impressions. ``interleaving_click_test`` keeps more of the evidence: it compares
the clicks each team drew per user (a paired t-test over users), where a vote keeps only the sign.

Shared items. An item in both rankers' top K is shown whatever the coin says; which team places it
depends on the coin and the ranks, and a click on it says little about which ranker is better, so it
adds noise to the credit. ``team_clicks(..., shared=...)`` leaves those clicks out and credits only
items one of the rankers would not have shown, the idea of optimized interleaving's credit (Radlinski,
Craswell 2013: documents both rankers place alike earn no credit). Two rankers that share most of
their lists (a model and its online-updated self) then need several times fewer users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import stats


class Preference(IntEnum):
    """Outcome of one impression (or one user): which ranker's items got more clicks."""

    A = -1
    TIE = 0
    B = 1


@dataclass(frozen=True)
class Interleaved:
    ids: np.ndarray  # [K] shown item ids, no duplicates
    teams: np.ndarray  # [K] 0 where ranker A contributed the item, 1 where ranker B did
    shared: np.ndarray  # [K] True where the item is in both rankers' first K (its clicks credit no team)


def _unique_ids(items: Sequence[int] | np.ndarray, name: str) -> list[int]:
    ids = [int(i) for i in np.asarray(items).ravel()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name} has duplicate item ids; a ranking lists each item once")
    return ids


def team_draft_interleave(
    list_a: Sequence[int] | np.ndarray, list_b: Sequence[int] | np.ndarray, k: int, rng: np.random.Generator
) -> Interleaved:
    """Merge rankings ``list_a`` and ``list_b`` into ``k`` positions (fewer if both run out).

    The team with fewer picks so far (a coin flip from ``rng`` when level) adds its highest-ranked
    item not yet shown; when one list is exhausted the other keeps filling.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    lists = (_unique_ids(list_a, "list_a"), _unique_ids(list_b, "list_b"))
    shown: set[int] = set()
    ids: list[int] = []
    teams: list[int] = []
    heads, picks = [0, 0], [0, 0]
    while len(ids) < k:
        for t in (0, 1):  # skip items the other team already placed
            while heads[t] < len(lists[t]) and lists[t][heads[t]] in shown:
                heads[t] += 1
        live = [heads[t] < len(lists[t]) for t in (0, 1)]
        if not any(live):
            break
        if not all(live):
            team = live.index(True)
        elif picks[0] != picks[1]:
            team = int(picks[1] < picks[0])
        else:
            team = int(rng.integers(2))
        item = lists[team][heads[team]]
        ids.append(item)
        teams.append(team)
        shown.add(item)
        picks[team] += 1
    both = set(lists[0][:k]) & set(lists[1][:k])
    return Interleaved(np.array(ids, dtype=np.int64), np.array(teams, dtype=np.int8),
                       np.array([i in both for i in ids], dtype=bool))


def team_clicks(teams: np.ndarray, clicked_positions: Sequence[int] | np.ndarray,
                shared: np.ndarray | None = None) -> tuple[int, int]:
    """Clicks on team A's and on team B's positions of one impression (0-based ``clicked_positions`` into
    ``teams`` ``[K]``); with ``shared`` ``[K]``, clicks on items both rankers show count for neither."""
    teams = np.asarray(teams)
    pos = np.asarray(clicked_positions, dtype=np.int64).ravel()
    if np.any((pos < 0) | (pos >= len(teams))):
        raise ValueError(f"clicked positions {pos.tolist()} must lie in [0, {len(teams)}) of the shown list")
    if shared is not None:
        pos = pos[~np.asarray(shared, dtype=bool)[pos]]
    b = int(np.sum(teams[pos] == 1))
    return len(pos) - b, b


def interleaving_credit(teams: np.ndarray, clicked_positions: Sequence[int] | np.ndarray,
                        shared: np.ndarray | None = None) -> Preference:
    """Which team won one impression: the one whose positions got more of the clicks (``team_clicks``);
    no clicks or equal clicks is a tie."""
    a, b = team_clicks(teams, clicked_positions, shared)
    return Preference(int(np.sign(b - a)))


@dataclass(frozen=True)
class InterleavingReport:
    wins_a: int
    wins_b: int
    ties: int
    delta: float  # (wins_b - wins_a) / (wins_a + wins_b + ties): > 0 favours B
    ci_low: float
    ci_high: float
    p_value: float  # two-sided sign test on the non-tied units


def interleaving_test(wins_a: int, wins_b: int, ties: int, confidence: float = 0.95) -> InterleavingReport:
    """Sign test of ``wins_b`` vs ``wins_a`` (exact binomial, p = 1/2, ties dropped) and the preference
    ``delta`` with a normal-approximation interval (the mean of per-unit outcomes -1 / 0 / +1).

    Pass counts of independent units: users (``interleaving_user_test``), not impressions.
    """
    if min(wins_a, wins_b, ties) < 0 or wins_a + wins_b + ties == 0:
        raise ValueError(f"counts must be >= 0 with at least one unit, got {wins_a}, {wins_b}, {ties}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = wins_a + wins_b + ties
    delta = (wins_b - wins_a) / n
    # sample variance of the outcomes: E[o^2] = (wins_a + wins_b) / n
    se = math.sqrt(max((wins_a + wins_b) / n - delta**2, 0.0) / (n - 1)) if n > 1 else math.inf
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    decided = wins_a + wins_b
    p = float(stats.binomtest(wins_b, decided, 0.5).pvalue) if decided else 1.0
    return InterleavingReport(wins_a, wins_b, ties, delta, delta - half, delta + half, p)


def interleaving_user_test(
    users: Sequence[int] | np.ndarray, outcomes: Sequence[int] | np.ndarray, confidence: float = 0.95
) -> InterleavingReport:
    """The test to use: each user (``users`` ``[I]``, one per impression) votes for the team that won
    more of their impression ``outcomes`` ``[I]`` (``Preference`` values), then a sign test over users."""
    u, o = np.asarray(users), np.asarray(outcomes, dtype=np.int64)
    if u.ndim != 1 or u.shape != o.shape or u.size == 0:
        raise ValueError(f"users {u.shape} and outcomes {o.shape} must be non-empty 1-D of the same length")
    if np.any(np.abs(o) > 1):
        raise ValueError("outcomes must be Preference values -1 (A), 0 (tie) or +1 (B)")
    _, index = np.unique(u, return_inverse=True)
    votes = np.sign(np.bincount(index, weights=o))
    return interleaving_test(int(np.sum(votes < 0)), int(np.sum(votes > 0)), int(np.sum(votes == 0)), confidence)


@dataclass(frozen=True)
class ClickDifferenceReport:
    users: int
    clicks_a: float  # mean clicks per user on team A's positions
    clicks_b: float
    diff: float  # clicks_b - clicks_a: > 0 favours B
    ci_low: float
    ci_high: float
    p_value: float  # two-sided one-sample t-test of the per-user differences


def interleaving_click_test(
    users: Sequence[int] | np.ndarray, clicks_a: Sequence[float] | np.ndarray, clicks_b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> ClickDifferenceReport:
    """Per impression (``users`` ``[I]``), the clicks on team A's and team B's positions; summed per user, then a
    one-sample t-test of the users' differences B - A against 0 (users as the unit, as in ``interleaving_user_test``).

    A user's vote keeps only which team won; the difference also counts by how much, so a ranker that wins
    by two clicks where it wins, and loses by one where it loses, is seen as better. Valid under a true tie
    because each position's team is a fair coin: the per-user difference is then symmetric around 0.
    """
    u, a, b = np.asarray(users), np.asarray(clicks_a, dtype=np.float64), np.asarray(clicks_b, dtype=np.float64)
    if u.ndim != 1 or u.shape != a.shape or u.shape != b.shape or u.size == 0:
        raise ValueError(f"users {u.shape}, clicks_a {a.shape} and clicks_b {b.shape} must be non-empty 1-D of one "
                         "length")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or np.any(a < 0) or np.any(b < 0):
        raise ValueError("clicks must be finite counts >= 0")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    _, index = np.unique(u, return_inverse=True)
    per_a, per_b = np.bincount(index, weights=a), np.bincount(index, weights=b)
    d = per_b - per_a
    n, diff = len(d), float(d.mean())
    if n < 2:
        raise ValueError("the click test needs impressions of at least 2 users")
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:  # every user differs by the same amount (often: no user clicked at all)
        return ClickDifferenceReport(n, float(per_a.mean()), float(per_b.mean()), diff, diff, diff,
                                     1.0 if diff == 0 else 0.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, n - 1))
    return ClickDifferenceReport(n, float(per_a.mean()), float(per_b.mean()), diff, diff - half, diff + half, p)
