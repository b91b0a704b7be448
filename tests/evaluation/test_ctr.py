import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from seekrec.evaluation.ctr import auc, ctr_report, ece, gauc, logloss

impressions = st.lists(
    st.tuples(st.integers(0, 1), st.floats(0.0, 1.0).map(lambda p: round(p, 6)), st.integers(0, 4)),
    min_size=2,
    max_size=60,
)


def test_auc_hand_computed_and_ties_count_half():
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_auc_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))
    probs = np.clip(scores, 0.05, 0.95)
    assert logloss(labels, probs) == pytest.approx(sklearn_metrics.log_loss(labels, probs))


def test_gauc_hand_computed_weights_users_by_impressions():
    users = np.array(["a", "a", "a", "b", "b", "c"])
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.3, 0.5])
    # a: positive beats one of two negatives -> 0.5 (3 impressions); b: 0 (2); c: one class, skipped
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 2 * 0.0) / 5)
    with pytest.raises(ValueError, match="both a positive and a negative"):
        gauc(["a", "b"], [1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        gauc(["a"], [1, 0], [0.1, 0.2])


def test_logloss_hand_computed_and_clipped():
    assert logloss([1, 0], [0.8, 0.3]) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        logloss([1], [1.5])


def test_ece_hand_computed():
    labels, probs = [1, 0, 1, 1], [0.1, 0.15, 0.85, 0.95]
    # bin [0, .5]: mean label .5, mean prob .125; bin (.5, 1]: 1 vs .9; each holds half the rows
    assert ece(labels, probs, n_bins=2) == pytest.approx(0.5 * 0.375 + 0.5 * 0.1)
    assert ece([0, 1], [0.5, 1.0], n_bins=2) == pytest.approx(0.5 * 0.5)  # 0.5 falls in the first bin
    with pytest.raises(ValueError, match="n_bins"):
        ece(labels, probs, n_bins=0)


def test_ctr_report_keys():
    report = ctr_report([1, 0, 1, 0], [0.9, 0.2, 0.4, 0.6], users=[1, 1, 2, 2])
    assert set(report) == {"auc", "gauc", "logloss", "ece"}
    assert "gauc" not in ctr_report([1, 0], [0.9, 0.2])


@given(impressions)
def test_auc_bounds_and_invariants(rows):
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows])
    assume(0 < labels.sum() < len(labels))
    value = auc(labels, scores)
    assert 0.0 <= value <= 1.0
    assert auc(labels, -scores) == pytest.approx(1.0 - value)
    assert auc(labels, 3.0 * scores - 7.0) == pytest.approx(value), "invariant to increasing maps"


@given(impressions)
def test_gauc_bounds_and_single_user_is_auc(rows):
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows])
    users = np.array([r[2] for r in rows])
    assume(0 < labels.sum() < len(labels))
    assert gauc(np.zeros(len(rows)), labels, scores) == pytest.approx(auc(labels, scores))
    mixed = [u for u in set(users.tolist()) if 0 < labels[users == u].sum() < (users == u).sum()]
    if mixed:
        assert 0.0 <= gauc(users, labels, scores) <= 1.0


@given(impressions, st.integers(1, 20))
def test_ece_bounds_and_invariants(rows, n_bins):
    labels = np.array([r[0] for r in rows])
    probs = np.array([r[1] for r in rows])
    value = ece(labels, probs, n_bins)
    assert 0.0 <= value <= 1.0 + 1e-12
    assert ece(labels, labels.astype(float), n_bins) == pytest.approx(0.0), "labels as probabilities"
    assert ece(labels, probs, 1) == pytest.approx(abs(labels.mean() - probs.mean()))
    assert logloss(labels, probs) >= 0.0
