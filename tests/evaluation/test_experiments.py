"""Experiment statistics (experiments.py, sequential.py, interleaving.py): references and simulations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from seekrec.evaluation.abtest import welch_test
from seekrec.evaluation.experiments import (
    benjamini_hochberg,
    cuped,
    cuped_adjust,
    ratio_estimate,
    ratio_test,
    srm_check,
    users_for_power,
    users_needed,
)
from seekrec.evaluation.interleaving import (
    Preference,
    interleaving_click_test,
    interleaving_credit,
    interleaving_test,
    interleaving_user_test,
    team_clicks,
    team_draft_interleave,
)
from seekrec.evaluation.sequential import confidence_sequence, log_mixture_lr, msprt, msprt_pvalues


def clustered_ctr(rng: np.random.Generator, users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user clicks and impressions: users differ in activity and in their own click rate."""
    impressions = 1 + rng.poisson(rng.gamma(2.0, 4.0, users))
    clicks = rng.binomial(impressions, rng.beta(1.0, 9.0, users))
    return clicks.astype(float), impressions.astype(float)


# ------------------------------------------------------------------------------ ratio metrics (delta)


def test_delta_method_variance_matches_a_user_bootstrap_and_beats_the_per_request_one():
    rng = np.random.default_rng(0)
    clicks, imps = clustered_ctr(rng, 2000)
    est = ratio_estimate(clicks, imps)
    idx = rng.integers(0, 2000, size=(2000, 2000))  # 2000 bootstrap resamples of users
    boot_var = (clicks[idx].sum(1) / imps[idx].sum(1)).var(ddof=1)
    assert est.ratio == pytest.approx(clicks.sum() / imps.sum())
    assert est.variance == pytest.approx(boot_var, rel=0.10)
    # treating impressions as independent Bernoulli trials understates the variance
    assert est.ratio * (1 - est.ratio) / imps.sum() < 0.8 * boot_var


def test_ratio_with_unit_denominators_is_the_welch_test_of_means():
    rng = np.random.default_rng(1)
    a, b = rng.binomial(1, 0.10, 6000).astype(float), rng.binomial(1, 0.11, 5000).astype(float)
    rep, ref = ratio_test(a, np.ones_like(a), b, np.ones_like(b)), welch_test(a, b)
    assert rep.diff == pytest.approx(ref.diff) and rep.relative_lift == pytest.approx(ref.relative_lift)
    assert rep.z == pytest.approx(ref.t, rel=1e-12)  # the same standard error
    assert rep.p_value == pytest.approx(ref.p_value, rel=2e-3)  # normal vs t with ~10^4 dof
    assert rep.ci_low == pytest.approx(ref.ci_low, rel=2e-3) and rep.ci_high == pytest.approx(ref.ci_high, rel=2e-3)
    assert rep.lift_ci_low < rep.relative_lift < rep.lift_ci_high


def test_ratio_test_finds_a_real_ctr_lift_and_rejects_bad_input():
    rng = np.random.default_rng(2)
    num_a, den_a = clustered_ctr(rng, 3000)
    num_b, den_b = clustered_ctr(rng, 3000)
    num_b = rng.binomial(den_b.astype(int), np.minimum(1.0, 1.3 * num_b / den_b)).astype(float)  # ~ +30% CTR
    rep = ratio_test(num_a, den_a, num_b, den_b)
    assert rep.p_value < 1e-6 and rep.ci_low > 0 and 0.15 < rep.relative_lift < 0.45
    with pytest.raises(ValueError, match="one value per user"):
        ratio_estimate(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="denominator must be positive"):
        ratio_estimate(np.zeros(3), np.zeros(3))


# ---------------------------------------------------------------------------------------------- CUPED


def correlated(rng: np.random.Generator, n: int, rho: float, effect: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=n)
    return effect + rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n), x + 5.0


def test_cuped_theta_is_the_pooled_ols_slope():
    rng = np.random.default_rng(3)
    (y_a, x_a), (y_b, x_b) = correlated(rng, 300, 0.6), correlated(rng, 200, 0.6, effect=0.4)
    res = cuped(y_a, x_a, y_b, x_b)
    assert res.theta == pytest.approx(stats.linregress(np.r_[x_a, x_b], np.r_[y_a, y_b]).slope, rel=1e-10)
    np.testing.assert_allclose(res.y_a, y_a - res.theta * (x_a - np.r_[x_a, x_b].mean()))
    one_arm = cuped_adjust(y_a, x_a)
    assert np.cov(one_arm, x_a)[0, 1] == pytest.approx(0.0, abs=1e-12)  # the OLS residual is uncorrelated with x
    with pytest.raises(ValueError, match="constant"):
        cuped(y_a, np.ones_like(y_a), y_b, np.ones_like(y_b))


def test_cuped_variance_reduction_is_the_squared_correlation():
    rng = np.random.default_rng(4)
    (y_a, x_a), (y_b, x_b) = correlated(rng, 20_000, 0.7), correlated(rng, 20_000, 0.7, effect=0.05)
    res = cuped(y_a, x_a, y_b, x_b)
    assert res.variance_reduction == pytest.approx(0.49, abs=0.02)
    raw, adj = welch_test(y_a, y_b), welch_test(res.y_a, res.y_b)
    assert (adj.ci_high - adj.ci_low) == pytest.approx((raw.ci_high - raw.ci_low) * math.sqrt(1 - 0.49), rel=0.03)


def test_cuped_keeps_the_mean_difference_unbiased():
    rng = np.random.default_rng(5)
    raw, adj = [], []
    for _ in range(400):
        (y_a, x_a), (y_b, x_b) = correlated(rng, 200, 0.8), correlated(rng, 200, 0.8, effect=0.3)
        res = cuped(y_a, x_a, y_b, x_b)
        raw.append(y_b.mean() - y_a.mean())
        adj.append(res.y_b.mean() - res.y_a.mean())
    raw, adj = np.array(raw), np.array(adj)
    assert abs(adj.mean() - 0.3) < 3 * adj.std() / math.sqrt(400)
    assert adj.std() == pytest.approx(raw.std() * 0.6, rel=0.15)  # sqrt(1 - 0.8^2)


# ------------------------------------------------------------------------------- sample-ratio mismatch


def test_srm_check_agrees_with_scipy_and_flags_broken_splits():
    ref = stats.chisquare([5000, 5300], [5150, 5150])
    res = srm_check([5000, 5300], [0.5, 0.5])
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert res.p_value == pytest.approx(0.0031, abs=1e-4)
    assert not res.mismatch and srm_check([5000, 5300], [0.5, 0.5], alpha=0.01).mismatch
    assert srm_check([5000, 5400], [0.5, 0.5]).mismatch  # p = 9e-5
    assert not srm_check([5000, 5040], [0.5, 0.5]).mismatch  # p = 0.69
    assert not srm_check([2010, 1985, 6005], [0.2, 0.2, 0.6]).mismatch
    with pytest.raises(ValueError, match="sum to 1"):
        srm_check([10, 10], [0.5, 0.6])


# ---------------------------------------------------------------------------------- Benjamini-Hochberg

# the 15 p-values of the worked example in Benjamini & Hochberg (1995)
# fmt: off
BH_1995 = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719,
           0.6528, 0.7590, 1.000]
# fmt: on


def test_benjamini_hochberg_on_the_1995_example():
    res = benjamini_hochberg(np.array(BH_1995)[::-1], q=0.05)  # order must not matter
    assert res.reject[::-1].tolist() == [True] * 4 + [False] * 11
    np.testing.assert_allclose(res.qvalues, stats.false_discovery_control(np.array(BH_1995)[::-1], method="bh"))
    assert res.qvalues[-4] == pytest.approx(0.0095 * 15 / 4)


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50), st.floats(0.01, 0.5))
def test_benjamini_hochberg_is_the_step_up_rule(pvalues, q):
    p = np.array(pvalues)
    res = benjamini_hochberg(p, q)
    np.testing.assert_allclose(res.qvalues, stats.false_discovery_control(p, method="bh"), rtol=1e-12, atol=0)
    ps, m = np.sort(p), len(p)
    below = np.flatnonzero(ps <= q * np.arange(1, m + 1) / m)
    cutoff = ps[below[-1]] if below.size else -1.0
    expected = p <= cutoff
    # the adjusted value may sit on q up to a rounding error; compare away from that edge
    clear = np.abs(res.qvalues - q) > 1e-12
    assert np.array_equal(res.reject[clear], expected[clear])


# --------------------------------------------------------------------------------------- sample size


def test_users_needed_textbook_value_and_simulated_power():
    assert users_needed(0.2, 1.0) == 393  # 2 (1.95996 + 0.84162)^2 / 0.2^2 = 392.4
    assert users_needed(-0.5, 2.0) == users_needed(0.25, 1.0) == 252
    # a test that saw z = 0.2 / sqrt(2 / 100) with 100 users per arm needs what users_needed says, both arms
    assert users_for_power(0.2 / math.sqrt(2 / 100), 200) == pytest.approx(2 * users_needed(0.2, 1.0), abs=2)
    with pytest.raises(ValueError, match="non-zero"):
        users_for_power(0.0, 100)
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.0, 1.0, (4000, 393)), rng.normal(0.2, 1.0, (4000, 393))
    power = np.mean(stats.ttest_ind(b, a, axis=1).pvalue < 0.05)
    assert 0.77 <= power <= 0.83
    with pytest.raises(ValueError, match="sd must be positive"):
        users_needed(0.1, 0.0)


# ---------------------------------------------------------------------------------------------- mSPRT


def test_mixture_lr_is_the_ratio_of_marginal_densities():
    d, v, tau2 = np.array([-0.3, 0.0, 0.05, 0.2]), np.array([0.01, 0.02, 0.002, 0.04]), 0.01
    ref = stats.norm.pdf(d, 0, np.sqrt(v + tau2)) / stats.norm.pdf(d, 0, np.sqrt(v))
    np.testing.assert_allclose(np.exp(log_mixture_lr(d, v, tau2)), ref, rtol=1e-12)


def simulate_looks(
    rng: np.random.Generator, effect: float, experiments: int = 2000, looks: int = 20, per_look: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Effect estimates and plug-in variances ``[E, T]`` at ``looks`` equally spaced looks (unit-sd outcomes)."""
    n = looks * per_look
    a, b = rng.normal(0.0, 1.0, (experiments, n)), rng.normal(effect, 1.0, (experiments, n))
    at = np.arange(per_look, n + 1, per_look)

    def mean_var(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s1, s2 = np.cumsum(x, axis=1)[:, at - 1], np.cumsum(x * x, axis=1)[:, at - 1]
        return s1 / at, (s2 - s1**2 / at) / (at - 1)

    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    return mb - ma, (va + vb) / at


def test_msprt_keeps_the_false_positive_rate_under_peeking_while_repeated_t_tests_do_not():
    delta, var = simulate_looks(np.random.default_rng(7), effect=0.0)
    p_always = msprt_pvalues(delta, var, tau2=0.01)
    p_naive = 2 * stats.norm.sf(np.abs(delta) / np.sqrt(var))
    fpr_msprt, fpr_peek = np.mean(p_always[:, -1] < 0.05), np.mean((p_naive < 0.05).any(axis=1))
    slack = 3 * math.sqrt(0.05 * 0.95 / len(delta))
    assert fpr_msprt <= 0.05 + slack
    assert fpr_peek > 0.10
    assert abs(np.mean(p_naive[:, -1] < 0.05) - 0.05) <= slack  # a single look is fine: the simulation is sound
    assert np.all(np.diff(p_always, axis=1) <= 0)
    cs = confidence_sequence(delta, var, tau2=0.01, alpha=0.05)
    assert np.array_equal(p_always < 0.05, (cs.lower > 0) | (cs.upper < 0))  # the test and the interval agree


def test_msprt_detects_a_real_effect():
    delta, var = simulate_looks(np.random.default_rng(8), effect=0.2, experiments=1000)
    p = msprt_pvalues(delta, var, tau2=0.04)
    assert np.mean(p[:, -1] < 0.05) > 0.9
    cs = confidence_sequence(delta, var, tau2=0.04)
    assert np.mean((cs.lower <= 0.2) & (cs.upper >= 0.2)) >= 0.95  # covers the true effect at every look


def test_msprt_from_streams_matches_the_array_api():
    rng = np.random.default_rng(9)
    y_a, y_b = rng.normal(1.0, 2.0, 3000), rng.normal(1.3, 2.0, 2500)
    t_a, t_b = rng.uniform(0, 10, 3000), rng.uniform(0, 10, 2500)
    looks = np.arange(1.0, 10.5, 1.0)
    rep = msprt(y_a, t_a, y_b, t_b, looks, tau2=0.09)
    seen_a, seen_b = t_a <= 4.0, t_b <= 4.0
    assert (rep.n_a[3], rep.n_b[3]) == (seen_a.sum(), seen_b.sum())
    assert rep.delta_hat[3] == pytest.approx(y_b[seen_b].mean() - y_a[seen_a].mean())
    assert rep.variance[3] == pytest.approx(
        y_a[seen_a].var(ddof=1) / seen_a.sum() + y_b[seen_b].var(ddof=1) / seen_b.sum()
    )
    np.testing.assert_allclose(rep.p_values, msprt_pvalues(rep.delta_hat, rep.variance, 0.09))
    first = rep.first_rejection(0.05)
    assert first is not None and rep.p_values[first] < 0.05 and rep.lower[first] > 0
    assert np.all(np.diff(rep.upper - rep.lower) <= 0)
    with pytest.raises(ValueError, match="fewer than 2 users"):
        msprt(y_a, t_a, y_b, t_b, np.array([0.0001, 1.0]), tau2=0.09)
    with pytest.raises(ValueError, match="tau2"):
        msprt_pvalues(np.zeros(3), np.ones(3), tau2=0.0)


# ------------------------------------------------------------------------------------------ interleaving

rankings = st.lists(st.integers(0, 29), unique=True, max_size=20)


@settings(max_examples=200)
@given(rankings, rankings, st.integers(1, 45), st.integers(0, 2**32 - 1))
def test_team_draft_properties(list_a, list_b, k, seed):
    out = team_draft_interleave(list_a, list_b, k, np.random.default_rng(seed))
    again = team_draft_interleave(list_a, list_b, k, np.random.default_rng(seed))
    ids, teams = out.ids.tolist(), out.teams.tolist()
    assert ids == again.ids.tolist() and teams == again.teams.tolist()
    assert len(set(ids)) == len(ids) == min(k, len(set(list_a) | set(list_b)))
    for team, source in ((0, list_a), (1, list_b)):
        picked = [i for i, t in zip(ids, teams, strict=True) if t == team]
        positions = [source.index(i) for i in picked]  # raises if a team shows an item its ranker did not list
        assert positions == sorted(positions)
    for j in range(len(ids)):
        shown = set(ids[:j])
        if any(i not in shown for i in list_a) and any(i not in shown for i in list_b):
            assert abs(2 * sum(teams[: j + 1]) - (j + 1)) <= 1


def test_team_draft_hand_example_and_credit():
    out = team_draft_interleave([1, 2, 3, 4], [2, 5, 1, 6], 4, np.random.default_rng(0))
    assert sorted(out.ids[:2].tolist()) == [1, 2] and sorted(out.teams[:2].tolist()) == [0, 1]
    assert interleaving_credit(np.array([0, 1, 1, 0]), [1, 2, 3]) is Preference.B
    assert interleaving_credit(np.array([0, 1, 1, 0]), [0, 1]) is Preference.TIE
    assert interleaving_credit(np.array([0, 1, 1, 0]), []) is Preference.TIE
    assert interleaving_credit(np.array([0, 1, 1, 0]), [3]) is Preference.A
    with pytest.raises(ValueError, match="clicked positions"):
        interleaving_credit(np.array([0, 1]), [2])


def test_interleaving_test_is_a_sign_test_with_the_preference():
    rep = interleaving_test(40, 60, 100)
    assert rep.delta == pytest.approx(0.1)
    assert rep.p_value == pytest.approx(stats.binomtest(60, 100, 0.5).pvalue)
    se = math.sqrt((100 / 200 - 0.01) / 199)
    assert (rep.ci_low, rep.ci_high) == (pytest.approx(0.1 - 1.959964 * se), pytest.approx(0.1 + 1.959964 * se))
    assert interleaving_test(0, 0, 5).p_value == 1.0


def simulate_interleaving(
    rng: np.random.Generator, users: int, per_user: int, b_is_better: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Impression outcomes of users who click relevant items (ids 0-9) at a position-decaying rate."""
    user_ids, outcomes = [], []
    for u in range(users):
        for _ in range(per_user):
            list_a = rng.permutation(40)
            list_b = np.r_[rng.permutation(10), 10 + rng.permutation(30)] if b_is_better else list_a
            shown = team_draft_interleave(list_a, list_b, 10, rng)
            p_click = np.where(shown.ids < 10, 0.5, 0.05) / np.arange(1, 11)
            outcomes.append(interleaving_credit(shown.teams, np.flatnonzero(rng.random(10) < p_click)))
            user_ids.append(u)
    return np.array(user_ids), np.array(outcomes)


def test_identical_rankers_tie_and_the_better_ranker_wins():
    users, outcomes = simulate_interleaving(np.random.default_rng(10), 400, 5, b_is_better=False)
    tie = interleaving_user_test(users, outcomes)
    assert abs(tie.delta) < 0.08 and tie.ci_low < 0 < tie.ci_high and tie.p_value > 0.05
    users, outcomes = simulate_interleaving(np.random.default_rng(11), 200, 5, b_is_better=True)
    win = interleaving_user_test(users, outcomes)
    assert win.delta > 0.3 and win.ci_low > 0 and win.p_value < 1e-6


def test_per_impression_sign_test_is_anti_conservative_when_users_differ():
    rng = np.random.default_rng(12)
    users = np.repeat(np.arange(100), 20)
    false_user, false_impression = 0, 0
    for _ in range(300):
        # every user has a taste for A or B, but on average neither ranker is better
        p_b = np.repeat(rng.beta(0.5, 0.5, 100), 20)
        outcomes = np.where(rng.random(2000) < p_b, Preference.B, Preference.A)
        false_user += interleaving_user_test(users, outcomes).p_value < 0.05
        false_impression += interleaving_test(int(np.sum(outcomes < 0)), int(np.sum(outcomes > 0)), 0).p_value < 0.05
    assert false_user / 300 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)
    assert false_impression / 300 > 0.5


def test_click_test_is_a_paired_t_test_over_users():
    users = np.array([0, 0, 1, 2, 2, 2, 3])
    a = np.array([1, 0, 2, 0, 1, 0, 0])
    b = np.array([0, 2, 1, 1, 1, 1, 3])
    rep = interleaving_click_test(users, a, b)
    d = np.array([2 - 1, 1 - 2, 3 - 1, 3 - 0])  # per user: B's clicks - A's
    ref = stats.ttest_1samp(d, 0.0)
    assert rep.users == 4 and rep.diff == pytest.approx(d.mean()) and rep.p_value == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (rep.ci_low, rep.ci_high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert interleaving_click_test([0, 1], [0, 0], [0, 0]).p_value == 1.0  # no clicks at all
    with pytest.raises(ValueError, match="at least 2 users"):
        interleaving_click_test([0, 0], [1, 0], [0, 1])
    with pytest.raises(ValueError, match="counts >= 0"):
        interleaving_click_test([0, 1], [-1, 0], [0, 1])


def test_click_test_holds_alpha_under_a_tie_and_finds_the_better_ranker():
    rng = np.random.default_rng(13)
    false = 0
    for _ in range(300):
        users = np.repeat(np.arange(100), 5)
        # identical rankers: each click lands on A's or B's position by the team-draft coin
        clicks = rng.poisson(np.repeat(rng.gamma(0.5, 1.0, 100), 5))
        b = rng.binomial(clicks, 0.5)
        false += interleaving_click_test(users, clicks - b, b).p_value < 0.05
    assert false / 300 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)
    users = np.repeat(np.arange(400), 5)
    clicks = rng.poisson(np.repeat(rng.gamma(0.5, 1.0, 400), 5))
    b = rng.binomial(clicks, 0.6)  # B's positions draw 60% of the clicks
    better = interleaving_click_test(users, clicks - b, b)
    assert better.diff > 0 and better.ci_low > 0 and better.p_value < 1e-4


def test_shared_items_are_marked_and_credit_no_team():
    shown = team_draft_interleave([1, 2, 3, 4], [2, 5, 1, 6], 4, np.random.default_rng(0))
    assert shown.ids.tolist() == [2, 1, 5, 3] and shown.shared.tolist() == [True, True, False, False]
    assert team_clicks(shown.teams, [0, 2]) == (0, 2)  # items 2 (B's pick) and 5 (B)
    assert team_clicks(shown.teams, [0, 2], shown.shared) == (0, 1)  # item 2 is in both lists: no credit
    assert interleaving_credit(shown.teams, [0, 3], shown.shared) == Preference.A  # only item 3 (A) counts


def test_leaving_shared_items_out_holds_alpha_for_different_rankers_of_equal_quality():
    """Two rankers that order the same relevant items differently, neither better: the click test on items
    only one of them shows rejects no more often than alpha."""
    rng = np.random.default_rng(14)
    false = 0
    relevance = np.r_[np.full(15, 0.3), np.full(45, 0.02)]  # 15 relevant items of 60
    for _ in range(200):
        users, a_clicks, b_clicks = [], [], []
        for u in range(80):
            noisy = [np.argsort(-(relevance + rng.gumbel(0, 0.15, 60))) for _ in range(2)]  # same quality
            for _ in range(3):
                shown = team_draft_interleave(noisy[0], noisy[1], 10, rng)
                clicked = np.flatnonzero(rng.random(10) < relevance[shown.ids] / np.arange(1, 11) ** 0.5)
                a, b = team_clicks(shown.teams, clicked, shown.shared)
                users.append(u)
                a_clicks.append(a)
                b_clicks.append(b)
        false += interleaving_click_test(users, a_clicks, b_clicks).p_value < 0.05
    assert false / 200 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
