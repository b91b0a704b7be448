"""Per-arm metrics of an online experiment, computed from attributed served-list logs.

Users, not requests, are the unit: assignment randomises users and one user's requests are correlated,
so every metric keeps one value per user (or a per-user numerator and denominator) and the tests of
``evaluation.experiments`` / ``evaluation.sequential`` run over users.

* CTR = sum over users of distinct items clicked / sum of items shown, with a delta-method variance.
* clicks per user and value per user: per-user means, compared with Welch's test.
* coverage = distinct items served in the arm / catalog size.
* novelty = mean over shown items of -log2(popularity share), share = (count + 1) / (total + catalog).
* latency p50 / p99 over the arm's served lists; users; requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import stats

from seekrec.evaluation.abtest import ABReport, welch_test
from seekrec.evaluation.experiments import RatioReport, ratio_test
from seekrec.evaluation.sequential import confidence_sequence, msprt_pvalues
from seekrec.experiments.attribution import Outcome


class Metric(str, Enum):
    """The metrics ``compare`` can test."""

    CTR = "ctr"
    CLICKS_PER_USER = "clicks_per_user"
    VALUE_PER_USER = "value_per_user"


@dataclass(frozen=True, eq=False)
class ArmMetrics:
    """One arm's per-user arrays ``[U]`` (users in first-served order) and its arm-level summaries."""

    arm: str
    user_ids: tuple[str, ...]
    requests: np.ndarray  # [U] served lists
    shown: np.ndarray  # [U] items shown, summed over the user's lists
    clicked: np.ndarray  # [U] distinct items clicked, summed over the user's lists
    clicks: np.ndarray  # [U] attributed click events
    value: np.ndarray  # [U] attributed value
    first_time: np.ndarray  # [U] when the user was first served in this arm (unix seconds)
    coverage: float
    novelty: float | None  # None without item popularity
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def users(self) -> int:
        return len(self.user_ids)

    @property
    def n_requests(self) -> int:
        return int(self.requests.sum())

    @property
    def ctr(self) -> float:
        """Clicked items / shown items over all the arm's users (nan when nothing was shown)."""
        shown = float(self.shown.sum())
        return float(self.clicked.sum()) / shown if shown > 0 else math.nan

    @property
    def clicks_per_user(self) -> float:
        return float(self.clicks.mean())

    @property
    def value_per_user(self) -> float:
        return float(self.value.mean())


def _check_layer(layer: str) -> None:
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty experiment layer name, got {layer!r}")


def _by_arm(outcomes: Iterable[Outcome], layer: str) -> dict[str, list[Outcome]]:
    """Outcomes grouped by their arm in ``layer``, in served-time order; lists outside the layer are skipped."""
    groups: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        if not isinstance(outcome, Outcome):
            raise TypeError(f"outcomes must hold Outcome objects (from attribute()), got {type(outcome).__name__}")
        arm = outcome.served.arm(layer)
        if arm is not None:
            groups.setdefault(arm, []).append(outcome)
    for group in groups.values():
        group.sort(key=lambda o: o.served.time)
    return groups


def arm_metrics(outcomes: Iterable[Outcome], layer: str, catalog_size: int,
                item_popularity: Mapping[str, float] | None = None) -> dict[str, ArmMetrics]:
    """``{arm: ArmMetrics}`` of every arm of ``layer`` seen in ``outcomes``.

    ``item_popularity`` maps item id -> interaction count (e.g. from the training data); items missing
    from it count 0. A user whose arm changed during the experiment (a rollout step) appears in each
    arm that served them: analyse one rollout step at a time.
    """
    _check_layer(layer)
    if isinstance(catalog_size, bool) or not isinstance(catalog_size, int) or catalog_size < 1:
        raise ValueError(f"catalog_size must be an integer >= 1 (items the server can recommend), got {catalog_size!r}")
    total_pop = None
    if item_popularity is not None:
        bad = next(((i, c) for i, c in item_popularity.items() if not (math.isfinite(c) and c >= 0)), None)
        if bad is not None:
            raise ValueError(f"item_popularity[{bad[0]!r}] must be a finite count >= 0, got {bad[1]!r}")
        total_pop = float(sum(item_popularity.values())) + catalog_size
    result = {}
    for arm, group in _by_arm(outcomes, layer).items():
        index: dict[str, int] = {}
        sums = np.zeros((6, len(group)))  # requests, shown, clicked, clicks, value, first time per user
        items: set[str] = set()
        surprisal, impressions = 0.0, 0
        for o in group:
            if o.served.user_id not in index:
                index[o.served.user_id] = len(index)
                sums[5, index[o.served.user_id]] = o.served.time
            u = index[o.served.user_id]
            sums[:5, u] += (1, o.shown, o.clicked, o.clicks, o.value)
            items.update(o.served.items)
            if total_pop is not None and item_popularity is not None:
                for item in o.served.items:
                    surprisal -= math.log2((item_popularity.get(item, 0.0) + 1) / total_pop)
                impressions += len(o.served.items)
        n = len(index)
        latency = np.array([o.served.latency_ms for o in group])
        novelty = None if total_pop is None else (surprisal / impressions if impressions else math.nan)
        result[arm] = ArmMetrics(arm, tuple(index), sums[0, :n], sums[1, :n], sums[2, :n], sums[3, :n], sums[4, :n],
                                 sums[5, :n], len(items) / catalog_size, novelty,
                                 float(np.percentile(latency, 50)), float(np.percentile(latency, 99)))
    return result


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control on one metric: both values, the difference with its CI, lift and p-value."""

    metric: Metric
    control: float
    treatment: float
    n_control: int  # users
    n_treatment: int
    diff: float  # treatment - control
    ci_low: float
    ci_high: float
    relative_lift: float  # treatment / control - 1 (nan when control is 0)
    p_value: float
    report: RatioReport | ABReport  # the underlying test's full report


def compare(control: ArmMetrics, treatment: ArmMetrics, metric: Metric | str,
            confidence: float = 0.95) -> Comparison:
    """Test ``metric`` between two arms over users: CTR with the delta-method ``ratio_test``
    (per-user clicked / shown), per-user means with ``welch_test``."""
    try:
        metric = Metric(metric)
    except ValueError as exc:
        raise ValueError(f"metric must be one of {[m.value for m in Metric]}, got {metric!r}") from exc
    if metric is Metric.CTR:
        r = ratio_test(control.clicked, control.shown, treatment.clicked, treatment.shown, confidence)
        return Comparison(metric, r.ratio_a, r.ratio_b, r.n_a, r.n_b, r.diff, r.ci_low, r.ci_high,
                          r.relative_lift, r.p_value, r)
    attr = "clicks" if metric is Metric.CLICKS_PER_USER else "value"
    w = welch_test(getattr(control, attr), getattr(treatment, attr), confidence)
    return Comparison(metric, w.mean_a, w.mean_b, w.n_a, w.n_b, w.diff, w.ci_low, w.ci_high,
                      w.relative_lift, w.p_value, w)


# -------------------------------------------------------------------------------------------- timeline


@dataclass(frozen=True, eq=False)
class ArmTimeline:
    """Cumulative CTR of one arm at each look ``[T]`` (lists served before ``times[t]`` with their clicks).

    For a treatment arm, ``diff`` is its CTR minus control's, ``p_value`` the always-valid mSPRT p-value
    of that difference and ``diff_low`` / ``diff_high`` its confidence sequence; all None for control.
    Looks where a value is undefined (fewer than 2 users, nothing shown, no variance yet) hold nan.
    """

    arm: str
    times: np.ndarray  # [T] look times (ends of the buckets)
    users: np.ndarray  # [T] users served so far
    requests: np.ndarray  # [T] lists served so far
    ctr: np.ndarray  # [T]
    ctr_low: np.ndarray  # [T] normal CI of the CTR (delta method), at ``confidence``
    ctr_high: np.ndarray  # [T]
    diff: np.ndarray | None  # [T] ctr - control ctr
    p_value: np.ndarray | None  # [T]
    diff_low: np.ndarray | None  # [T]
    diff_high: np.ndarray | None  # [T]


def _cumulative_ratio(group: Sequence[Outcome], looks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Users, requests, CTR and its delta-method variance ``[T]`` at each look, from per-user running sums.

    Each list changes one user's (clicked x, shown y); the look needs n, sum x, sum y, sum x^2, sum y^2 and
    sum xy over users, whose increments follow from the user's totals before the list, so the whole
    timeline is a few cumulative sums instead of a per-user recount at every look. ``ratio_estimate`` on
    the users served before a look gives the same numbers (the tests check it).
    """
    t = np.array([o.served.time for o in group])  # sorted by _by_arm
    x = np.array([o.clicked for o in group], dtype=np.float64)
    y = np.array([o.shown for o in group], dtype=np.float64)
    _, u = np.unique([o.served.user_id for o in group], return_inverse=True)
    order = np.argsort(u, kind="stable")  # each user's lists together, still in time order
    us, new_user = u[order], np.ones(len(u), dtype=bool)
    new_user[1:] = us[1:] != us[:-1]
    before = {}
    for name, v in (("x", x), ("y", y)):
        cs = np.cumsum(v[order])
        start = np.maximum.accumulate(np.where(new_user, np.arange(len(u)), 0))  # first index of each user's run
        offset = cs[start] - v[order][start]  # total of the runs before this user
        prior = np.empty(len(u))
        prior[order] = cs - offset - v[order]  # the user's totals before this list
        before[name] = prior
    first = np.zeros(len(u))
    first[order[new_user]] = 1
    xb, yb = before["x"], before["y"]
    increments = np.stack([first, x, y, 2 * xb * x + x * x, 2 * yb * y + y * y, xb * y + yb * x + x * y])
    totals = np.concatenate([np.zeros((6, 1)), np.cumsum(increments, axis=1)], axis=1)
    k = np.searchsorted(t, looks, side="left")  # lists served strictly before each look
    n, sx, sy, sxx, syy, sxy = totals[:, k]
    with np.errstate(divide="ignore", invalid="ignore"):
        mx, my = sx / n, sy / n
        cxx, cyy, cxy = (sxx - n * mx**2) / (n - 1), (syy - n * my**2) / (n - 1), (sxy - n * mx * my) / (n - 1)
        var = (cxx / my**2 - 2 * mx * cxy / my**3 + mx**2 * cyy / my**4) / n
        ok = (n >= 2) & (my > 0)
        ratio = np.where(my > 0, mx / my, np.nan)
    return n.astype(np.int64), k.astype(np.int64), ratio, np.where(ok, np.maximum(var, 0.0), np.nan)


def _valid_running(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``values`` computed on the valid looks placed back at every look: a running quantity is carried
    over looks that carry no evidence, and nan before the first valid look."""
    idx = np.flatnonzero(valid)
    pos = np.searchsorted(idx, np.arange(len(valid)), side="right") - 1
    out = np.full(len(valid), np.nan)
    out[pos >= 0] = values[pos[pos >= 0]]
    return out


def timeline(outcomes: Iterable[Outcome], layer: str, bucket_s: float, *, control: str = "control",
             tau2: float = 1e-4, confidence: float = 0.95) -> dict[str, ArmTimeline]:
    """Per-arm cumulative CTR with a ``confidence`` band at the end of each ``bucket_s`` bucket (from the
    first served list), and each treatment's always-valid p-value and confidence sequence vs ``control``.

    A list and its clicks count at the list's served time. ``tau2`` is the mSPRT mixture variance in
    CTR units squared (1e-4: fastest for CTR differences of about 1 point); fix it before looking.
    """
    _check_layer(layer)
    if isinstance(bucket_s, bool) or not isinstance(bucket_s, (int, float)) or not (0 < bucket_s < math.inf):
        raise ValueError(f"bucket_s must be a finite number of seconds > 0, got {bucket_s!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    groups = _by_arm(outcomes, layer)
    if control not in groups:
        raise ValueError(f"control arm {control!r} has no served lists in layer {layer!r}; arms seen: {sorted(groups)}")
    start = min(g[0].served.time for g in groups.values())
    end = max(g[-1].served.time for g in groups.values())
    looks = start + bucket_s * np.arange(1, math.floor((end - start) / bucket_s) + 2)  # the last look passes `end`
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    series = {arm: _cumulative_ratio(group, looks) for arm, group in groups.items()}
    _, _, ctr_a, var_a = series[control]
    result = {}
    for arm, (n, requests, ctr, var) in series.items():
        half = z * np.sqrt(var)
        diff = p = low = high = None
        if arm != control:
            diff = ctr - ctr_a
            v = var + var_a
            valid = np.isfinite(diff) & np.isfinite(v) & (v > 0)
            if valid.any():
                cs = confidence_sequence(diff[valid], v[valid], tau2, 1 - confidence)
                p = _valid_running(msprt_pvalues(diff[valid], v[valid], tau2), valid)
                low, high = _valid_running(cs.lower, valid), _valid_running(cs.upper, valid)
            else:
                p, low, high = (np.full(len(looks), np.nan) for _ in range(3))
        result[arm] = ArmTimeline(arm, looks, n, requests, ctr, ctr - half, ctr + half, diff, p, low, high)
    return result
