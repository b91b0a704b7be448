import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekrec.evaluation import metrics


def test_hand_computed_ranking_metrics():
    ranks = np.array([0, 1, 9, 10, 99])
    assert metrics.hit_rate(ranks, 10) == pytest.approx(3 / 5)
    assert metrics.hit_rate(ranks, 1) == pytest.approx(1 / 5)
    expected = (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(11)) / 5
    assert metrics.ndcg(ranks, 10) == pytest.approx(expected)
    assert metrics.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 100) / 5)


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=100), st.integers(1, 300))
def test_ranking_metric_bounds(ranks, k):
    r = np.array(ranks)
    hr, nd = metrics.hit_rate(r, k), metrics.ndcg(r, k)
    assert 0 <= nd <= hr <= 1
    assert 0 < metrics.mrr(r) <= 1
    assert metrics.hit_rate(r, k + 1) >= hr


def test_coverage():
    assert metrics.coverage(np.array([[1, 2], [2, 3]]), 6) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.coverage(np.array([[1]]), 0)


def test_auc_hand_computed_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4), (0.8>0.1), (0.4=0.4 -> 1/2), (0.4>0.1)
    assert metrics.auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(3.5 / 4)
    assert metrics.auc([1, 0], [0.1, 0.9]) == 0.0
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([1, 0], [float("nan"), 0.2])


def test_logloss_hand_computed():
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        metrics.logloss([1], [1.5])


def test_bad_inputs():
    with pytest.raises(ValueError, match="no ranks"):
        metrics.mrr(np.array([]))
    with pytest.raises(ValueError, match=">= 0"):
        metrics.ndcg(np.array([-1]), 10)
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.auc([2, 0], [0.1, 0.2])
