import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekrec.evaluation import metrics
from seekrec.evaluation.significance import PerUser, ndcg_per_user, paired_comparison, seed_mean


def t3_two_sided_p(t: float) -> float:
    """Two-sided p of Student's t with 3 degrees of freedom, closed form."""
    x = abs(t) / math.sqrt(3)
    cdf = 0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi
    return 2 * (1 - cdf)


def test_ndcg_per_user_hand_computed():
    got = ndcg_per_user(np.array([0, 1, 9, 10, 99]), k=10)
    np.testing.assert_allclose(got, [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        ndcg_per_user(np.array([-1]))


@given(st.lists(st.integers(0, 3000), min_size=1, max_size=60), st.integers(1, 200))
def test_ndcg_per_user_mean_is_the_metric(ranks, k):
    r = np.array(ranks)
    assert ndcg_per_user(r, k).mean() == pytest.approx(metrics.ndcg(r, k), abs=1e-12)


def test_hand_checked_comparison_averages_seeds_and_aligns_users():
    users = np.array([1, 2, 3, 4])
    a = [PerUser(users, [1.0, 0.5, 0.0, 0.75]),
         PerUser(users[::-1], [0.75, 0.25, 0.5, 1.0])]  # the same users in reverse order
    b = [PerUser(users, [0.5, 0.25, 0.25, 0.0])]
    # per user A = [1, 0.5, 0.125, 0.75]; A - B = [0.5, 0.25, -0.125, 0.75]
    res = paired_comparison(a, b, name_a="ds", name_b="sas")
    sd = math.sqrt((0.15625**2 + 0.09375**2 + 0.46875**2 + 0.40625**2) / 3)
    se = sd / 2
    assert (res.n_users, res.n_seeds_a, res.n_seeds_b) == (4, 2, 1)
    assert res.mean_a == pytest.approx(0.59375) and res.mean_b == pytest.approx(0.25)
    assert res.diff == pytest.approx(0.34375)
    assert res.ratio == pytest.approx(0.59375 / 0.25)
    assert res.std_err == pytest.approx(se)
    assert res.t_pvalue == pytest.approx(t3_two_sided_p(0.34375 / se))
    half = 3.182446305284263 * se  # t_{0.975, 3}
    assert (res.ci_low, res.ci_high) == (pytest.approx(0.34375 - half), pytest.approx(0.34375 + half))
    # |d| ranks 1 (negative), 2, 3, 4: W- = 1; exact two-sided p = 2 * #{subsets summing to <= 1} / 2^4
    assert res.wilcoxon_pvalue == pytest.approx(2 * 2 / 16)
    assert (res.n_a_better, res.n_b_better, res.n_tied) == (3, 1, 0)
    assert res.to_dict()["name_a"] == "ds" and res.to_dict()["diff"] == res.diff


def test_mismatched_users_are_an_error():
    a = [PerUser(np.array([1, 2, 3]), [0.1, 0.2, 0.3])]
    b = [PerUser(np.array([1, 2, 4]), [0.1, 0.2, 0.3])]
    with pytest.raises(ValueError, match="other users"):
        paired_comparison(a, b)
    with pytest.raises(ValueError, match="run 1 evaluates other users"):
        seed_mean([a[0], b[0]])
    with pytest.raises(ValueError, match="unique"):
        PerUser(np.array([1, 1]), [0.0, 1.0])


def test_identical_models_give_zero_difference_and_p_one_without_warnings():
    rng = np.random.default_rng(0)
    runs = [PerUser(np.arange(1, 101), ndcg_per_user(rng.integers(0, 30, 100))) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = paired_comparison(runs, runs)
    assert res.diff == 0.0 and res.std_err == 0.0
    assert res.t_pvalue == 1.0 and res.wilcoxon_pvalue == 1.0
    assert (res.ci_low, res.ci_high) == (0.0, 0.0) and res.ratio == 1.0
    assert res.n_tied == 100


def test_clear_shift_is_significant_and_direction_is_kept():
    rng = np.random.default_rng(1)
    users = np.arange(1, 301)
    base = rng.integers(0, 40, size=300)
    better = [PerUser(users, ndcg_per_user(np.maximum(base - 5, 0) + rng.integers(0, 2, 300))) for _ in range(5)]
    worse = [PerUser(users, ndcg_per_user(base + rng.integers(0, 2, 300))) for _ in range(5)]
    res = paired_comparison(better, worse)
    assert res.diff > 0 and res.ci_low > 0
    assert res.t_pvalue < 0.05 and res.wilcoxon_pvalue < 0.05
    flipped = paired_comparison(worse, better)
    assert flipped.diff == pytest.approx(-res.diff) and flipped.t_pvalue == pytest.approx(res.t_pvalue)


def test_a_constant_non_zero_difference_has_t_p_zero():
    users = np.arange(1, 11)
    res = paired_comparison([PerUser(users, np.full(10, 0.5))], [PerUser(users, np.full(10, 0.25))])
    assert res.diff == 0.25 and res.std_err == 0.0 and res.t_pvalue == 0.0
    assert res.wilcoxon_pvalue < 0.01
