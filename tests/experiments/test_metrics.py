"""Per-arm metrics from served-list logs: hand-computed values on a tiny log, the tests they hand over
to (``ratio_test``, ``welch_test``), and the cumulative timeline against a per-look recount."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from seekrec.evaluation.abtest import welch_test
from seekrec.evaluation.experiments import ratio_estimate, ratio_test
from seekrec.evaluation.sequential import confidence_sequence, msprt_pvalues
from seekrec.experiments.attribution import EventRecord, Outcome, attribute
from seekrec.experiments.metrics import Metric, arm_metrics, compare, timeline
from seekrec.experiments.outcome_stores import SqliteOutcomeLog
from seekrec.experiments.outcomes import ServedList


def served(rid: str, user: str, t: float, arm: str, items: list[str], latency: float, layer: str = "ranker") -> ServedList:
    return ServedList(rid, user, t, {layer: arm}, "v1", items, latency, False)


TINY = [
    served("c1", "u1", 0.0, "control", ["a", "b", "c"], 10.0),
    served("c2", "u1", 10.0, "control", ["d", "e"], 20.0),
    served("c3", "u2", 5.0, "control", ["a", "f"], 30.0),
    served("t1", "u3", 1.0, "treatment", ["a", "b"], 5.0),
    served("t2", "u4", 2.0, "treatment", ["g", "h", "i"], 15.0),
    served("t3", "u5", 3.0, "treatment", ["a"], 25.0),
    served("x1", "u9", 4.0, "dense", ["a"], 1.0, layer="ui"),  # another layer: not in these metrics
]
EVENTS = [
    EventRecord("u1", "a", 1.0, request_id="c1"),
    EventRecord("u1", "a", 2.0, request_id="c1"),  # the same item twice: 2 clicks, 1 clicked item
    EventRecord("u2", "a", 6.0),  # no request id: falls back to c3
    EventRecord("u2", "f", 7.0, "click", 3.0, request_id="c3"),
    EventRecord("u3", "b", 2.0),
    EventRecord("u5", "a", 4.0, request_id="t3"),
    EventRecord("u5", "z", 4.0, request_id="t3"),  # not shown: not credited
]


@pytest.fixture(scope="module")
def tiny() -> dict:
    return arm_metrics(attribute(TINY, EVENTS, window_s=60), "ranker", catalog_size=10,
                       item_popularity={"a": 6, "b": 2})


def test_tiny_log_by_hand(tiny):
    assert set(tiny) == {"control", "treatment"}
    c, t = tiny["control"], tiny["treatment"]
    assert c.user_ids == ("u1", "u2") and t.user_ids == ("u3", "u4", "u5")
    np.testing.assert_array_equal(c.requests, [2, 1])
    np.testing.assert_array_equal(c.shown, [5, 2])
    np.testing.assert_array_equal(c.clicked, [1, 2])
    np.testing.assert_array_equal(c.clicks, [2, 2])
    np.testing.assert_array_equal(c.value, [2.0, 4.0])
    np.testing.assert_array_equal(c.first_time, [0.0, 5.0])
    assert (c.users, c.n_requests, t.users, t.n_requests) == (2, 3, 3, 3)
    assert c.ctr == pytest.approx(3 / 7) and t.ctr == pytest.approx(2 / 6)
    assert c.clicks_per_user == 2.0 and t.clicks_per_user == pytest.approx(2 / 3)
    assert c.value_per_user == 3.0
    assert (c.coverage, t.coverage) == (0.6, 0.5)  # {a..f} and {a, b, g, h, i} of 10
    assert (c.latency_p50_ms, c.latency_p99_ms) == pytest.approx((20.0, 29.8))
    assert (t.latency_p50_ms, t.latency_p99_ms) == pytest.approx((15.0, 24.8))
    # shares (count + 1) / (8 + 10): a 7/18, b 3/18, unseen 1/18
    a, b, unseen = math.log2(18 / 7), math.log2(18 / 3), math.log2(18)
    assert c.novelty == pytest.approx((2 * a + b + 4 * unseen) / 7)  # a b c d e a f
    assert t.novelty == pytest.approx((2 * a + b + 3 * unseen) / 6)  # a b g h i a


def test_novelty_needs_popularity():
    assert arm_metrics(attribute(TINY, [], 60), "ranker", 10)["control"].novelty is None


def test_ctr_comparison_is_ratio_test_on_the_per_user_arrays(tiny):
    c, t = tiny["control"], tiny["treatment"]
    got = compare(c, t, "ctr")
    assert got.report == ratio_test(np.array([1, 2]), np.array([5, 2]), np.array([1, 0, 1]), np.array([2, 3, 1]))
    assert (got.metric, got.control, got.treatment, got.n_control, got.n_treatment) == (Metric.CTR, 3 / 7, 2 / 6, 2, 3)
    assert (got.diff, got.p_value) == (got.report.diff, got.report.p_value)


def test_per_user_comparisons_are_welch_tests(tiny):
    c, t = tiny["control"], tiny["treatment"]
    assert compare(c, t, Metric.CLICKS_PER_USER).report == welch_test(np.array([2, 2]), np.array([1, 0, 1]))
    got = compare(c, t, Metric.VALUE_PER_USER, confidence=0.9)
    assert got.report == welch_test(np.array([2.0, 4.0]), np.array([1.0, 0.0, 1.0]), 0.9)
    with pytest.raises(ValueError, match="metric must be one of \\['ctr', 'clicks_per_user', 'value_per_user'\\]"):
        compare(c, t, "revenue")


def test_metrics_from_a_stored_log(tmp_path):
    with SqliteOutcomeLog(tmp_path / "served.db") as log:
        log.append(TINY)
        stored = list(log.read(arms={"ranker": "control"}))
    got = arm_metrics(attribute(stored, EVENTS, 60), "ranker", 10)
    assert set(got) == {"control"} and got["control"].ctr == pytest.approx(3 / 7)


def simulated(seed: int = 0, users: int = 300, days: int = 10) -> list[Outcome]:
    """Users arrive over ``days`` and come back a few times; treatment clicks a little more."""
    rng = np.random.default_rng(seed)
    outcomes = []
    for k in range(users):
        arm = "treatment" if k % 2 else "control"
        rate = rng.beta(2, 12) * (1.3 if arm == "treatment" else 1.0)
        for j, t in enumerate(rng.uniform(0, days, size=rng.integers(1, 6)) * 86400):
            n = int(rng.integers(3, 11))
            positions = tuple(np.flatnonzero(rng.random(n) < rate))
            record = served(f"r{k}-{j}", f"u{k}", float(t), arm, [f"i{rng.integers(500)}" for _ in range(n)], 5.0)
            outcomes.append(Outcome(record, len(positions), positions, float(len(positions))))
    return outcomes


def test_timeline_matches_a_recount_at_every_look():
    outcomes = simulated()
    tl = timeline(outcomes, "ranker", bucket_s=86400, tau2=1e-3)
    c, t = tl["control"], tl["treatment"]
    z = stats.norm.ppf(0.975)
    assert len(c.times) == 10 and c.times[-1] > max(o.served.time for o in outcomes)
    assert c.diff is None and c.p_value is None
    deltas, variances = [], []
    for i, look in enumerate(c.times):
        seen = arm_metrics([o for o in outcomes if o.served.time < look], "ranker", 500)
        for arm, series in (("control", c), ("treatment", t)):
            m = seen[arm]
            est = ratio_estimate(m.clicked, m.shown)
            assert (series.users[i], series.requests[i]) == (m.users, m.n_requests)
            assert series.ctr[i] == pytest.approx(est.ratio, rel=1e-12)
            assert series.ctr_high[i] - series.ctr[i] == pytest.approx(z * math.sqrt(est.variance), rel=1e-9)
        a, b = ratio_estimate(seen["control"].clicked, seen["control"].shown), ratio_estimate(
            seen["treatment"].clicked, seen["treatment"].shown)
        deltas.append(b.ratio - a.ratio)
        variances.append(a.variance + b.variance)
    np.testing.assert_allclose(t.diff, deltas, rtol=1e-9)
    np.testing.assert_allclose(t.p_value, msprt_pvalues(np.array(deltas), np.array(variances), 1e-3), rtol=1e-6)
    cs = confidence_sequence(np.array(deltas), np.array(variances), 1e-3, 0.05)
    np.testing.assert_allclose(t.diff_low, cs.lower, rtol=1e-6)
    assert np.all(np.diff(t.p_value) <= 0)  # always-valid p-values only fall


def test_timeline_leaves_looks_without_evidence_empty():
    early = [served("c0", "u0", 0.0, "control", ["a"], 1.0), served("t0", "u1", 0.0, "treatment", ["a"], 1.0)]
    later = [o for o in simulated(users=40, days=1) if o.served.time > 86400 / 4]
    tl = timeline([*(Outcome(s, 0, (), 0.0) for s in early), *later], "ranker", bucket_s=3600)
    assert np.isnan(tl["control"].ctr_low[0]) and np.isnan(tl["treatment"].p_value[0])  # one user per arm
    assert np.isfinite(tl["treatment"].p_value[-1]) and tl["control"].ctr[0] == 0.0


def test_timeline_needs_the_control_arm():
    with pytest.raises(ValueError, match="control arm 'baseline' has no served lists in layer 'ranker'; "
                                         "arms seen: \\['control', 'treatment'\\]"):
        timeline(attribute(TINY, [], 60), "ranker", 60, control="baseline")
    with pytest.raises(ValueError, match="bucket_s must be a finite number of seconds > 0"):
        timeline(attribute(TINY, [], 60), "ranker", 0)
