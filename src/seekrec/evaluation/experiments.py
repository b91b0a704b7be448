"""Statistics of an online experiments platform: ratio metrics, CUPED, sample-ratio mismatch,
Benjamini-Hochberg and sample sizes.

Users are the randomisation unit throughout: a user's requests are correlated (the same person, the
same taste), so treating requests as independent understates the variance and overstates
significance. Ratio metrics keep per-user numerators and denominators and use the delta method;
everything else takes one value per user. Sequential monitoring lives in ``sequential.py`` and
interleaving in ``interleaving.py``; the plain two-sample test is ``abtest.welch_test``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from seekrec.evaluation.abtest import ABReport, welch_test

__all__ = [
    "ABReport",
    "BHResult",
    "CupedResult",
    "RatioEstimate",
    "RatioReport",
    "SRMResult",
    "benjamini_hochberg",
    "cuped",
    "cuped_adjust",
    "ratio_estimate",
    "ratio_test",
    "srm_check",
    "users_needed",
    "welch_test",
]


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _finite_1d(x: np.ndarray | Sequence[float], name: str, min_len: int = 2) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or len(arr) < min_len:
        raise ValueError(f"{name} must be 1-D with at least {min_len} values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values; drop or impute them before testing")
    return arr


# ---------------------------------------------------------------------------------------- ratio metrics


@dataclass(frozen=True)
class RatioEstimate:
    """``sum(num) / sum(den)`` over one arm's users and its delta-method variance."""

    ratio: float
    variance: float
    n_users: int


def ratio_estimate(num: np.ndarray, den: np.ndarray) -> RatioEstimate:
    """Ratio metric (e.g. CTR = clicks / impressions) of one arm from per-user ``num`` and ``den`` ``[U]``.

    Var(mean(x) / mean(y)) ~ (1/U) (s_xx / m_y^2 - 2 m_x s_xy / m_y^3 + m_x^2 s_yy / m_y^4) (delta method,
    Deng et al. 2018): the user, not the request, is the independent unit.
    """
    x, y = _finite_1d(num, "num"), _finite_1d(den, "den")
    if x.shape != y.shape:
        raise ValueError(f"num {x.shape} and den {y.shape} must have one value per user each")
    mx, my = x.mean(), y.mean()
    if my <= 0:
        raise ValueError(f"mean denominator must be positive, got {my}; drop users with no exposure")
    cov = np.cov(x, y, ddof=1)
    var = (cov[0, 0] / my**2 - 2 * mx * cov[0, 1] / my**3 + mx**2 * cov[1, 1] / my**4) / len(x)
    return RatioEstimate(float(mx / my), float(max(var, 0.0)), len(x))


@dataclass(frozen=True)
class RatioReport:
    """Ratio metric of both arms, their difference and relative lift with normal-approximation intervals."""

    ratio_a: float
    ratio_b: float
    n_a: int
    n_b: int
    diff: float  # ratio_b - ratio_a
    ci_low: float
    ci_high: float
    relative_lift: float  # ratio_b / ratio_a - 1
    lift_ci_low: float
    lift_ci_high: float
    z: float
    p_value: float


def ratio_test(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    confidence: float = 0.95,
) -> RatioReport:
    """Compare a ratio metric between control ``a`` and treatment ``b`` with per-user numerators and
    denominators; normal approximation, delta-method variances (also for the relative lift)."""
    _check_confidence(confidence)
    a, b = ratio_estimate(num_a, den_a), ratio_estimate(num_b, den_b)
    diff = b.ratio - a.ratio
    se = math.sqrt(a.variance + b.variance)
    zq = float(stats.norm.ppf(0.5 + confidence / 2))
    z, p = _z_and_p(diff, se)
    if a.ratio != 0:
        # lift = R_b / R_a - 1; independent arms: Var ~ Var_b / R_a^2 + R_b^2 Var_a / R_a^4
        lift = b.ratio / a.ratio - 1
        lift_se = math.sqrt(b.variance / a.ratio**2 + b.ratio**2 * a.variance / a.ratio**4)
    else:
        lift, lift_se = float("nan"), float("nan")
    return RatioReport(
        a.ratio,
        b.ratio,
        a.n_users,
        b.n_users,
        diff,
        diff - zq * se,
        diff + zq * se,
        lift,
        lift - zq * lift_se,
        lift + zq * lift_se,
        z,
        p,
    )


def _z_and_p(diff: float, se: float) -> tuple[float, float]:
    if se == 0:
        return (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    z = diff / se
    return z, float(2 * stats.norm.sf(abs(z)))


# ---------------------------------------------------------------------------------------------- CUPED


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    var_x = x.var(ddof=1)
    if var_x == 0:
        raise ValueError(
            "the covariate x is constant across users, so it explains nothing; use one that varies "
            "(e.g. the same metric in the weeks before the experiment)"
        )
    return float(np.cov(x, y, ddof=1)[0, 1] / var_x)


def cuped_adjust(y: np.ndarray, x: np.ndarray, theta: float | None = None, x_mean: float | None = None) -> np.ndarray:
    """``y - theta (x - x_mean)`` ``[U]``: the outcome with the part predicted by the pre-experiment
    covariate ``x`` removed (Deng, Xu, Kohavi, Walker 2013).

    ``theta`` defaults to the OLS slope cov(x, y) / var(x) and ``x_mean`` to ``mean(x)`` of these users;
    when comparing arms, pass the pooled values (``cuped`` does) so both arms get the same shift.
    """
    y, x = _finite_1d(y, "y"), _finite_1d(x, "x")
    if x.shape != y.shape:
        raise ValueError(f"y {y.shape} and x {x.shape} must have one value per user each")
    if theta is None:
        theta = _ols_slope(x, y)
    return y - theta * (x - (x.mean() if x_mean is None else x_mean))


@dataclass(frozen=True)
class CupedResult:
    y_a: np.ndarray  # [U_a] adjusted outcomes of control; test with welch_test(y_a, y_b)
    y_b: np.ndarray  # [U_b] adjusted outcomes of treatment
    theta: float
    variance_reduction: float  # 1 - Var(diff of adjusted means) / Var(diff of raw means)


def cuped(y_a: np.ndarray, x_a: np.ndarray, y_b: np.ndarray, x_b: np.ndarray) -> CupedResult:
    """CUPED for two arms: outcomes ``y`` and pre-experiment covariates ``x`` (e.g. the same metric in
    the weeks before), per user.

    theta is fitted on both arms pooled, so the same linear function of ``x`` is subtracted in each
    arm; because ``x`` predates assignment it has the same expectation in both arms and the mean
    difference stays unbiased while its variance shrinks by about corr(x, y)^2.
    """
    y_a, x_a, y_b, x_b = (_finite_1d(v, n) for v, n in ((y_a, "y_a"), (x_a, "x_a"), (y_b, "y_b"), (x_b, "x_b")))
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    theta = _ols_slope(x, y)
    adj_a, adj_b = cuped_adjust(y_a, x_a, theta, x.mean()), cuped_adjust(y_b, x_b, theta, x.mean())
    raw = y_a.var(ddof=1) / len(y_a) + y_b.var(ddof=1) / len(y_b)
    new = adj_a.var(ddof=1) / len(adj_a) + adj_b.var(ddof=1) / len(adj_b)
    return CupedResult(adj_a, adj_b, theta, float(1 - new / raw) if raw > 0 else 0.0)


# ------------------------------------------------------------------------------- sample-ratio mismatch


@dataclass(frozen=True)
class SRMResult:
    statistic: float  # chi-square
    p_value: float
    mismatch: bool  # p_value < alpha: the assignment is broken; do not read the experiment's metrics


def srm_check(
    counts: Sequence[int] | np.ndarray, expected_shares: Sequence[float] | np.ndarray, alpha: float = 0.001
) -> SRMResult:
    """Chi-square goodness of fit of the users per arm against the designed split.

    A mismatch means users were lost or moved unevenly (bot filtering, redirects, crashes in one arm),
    which biases every metric; the small default ``alpha`` keeps false alarms rare across the many
    experiments a platform checks.
    """
    obs = np.asarray(counts, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    if obs.ndim != 1 or len(obs) < 2 or shares.shape != obs.shape:
        raise ValueError(f"counts {obs.shape} and expected_shares {shares.shape} need one entry per arm (>= 2)")
    if np.any(obs < 0) or obs.sum() == 0:
        raise ValueError(f"counts must be >= 0 and not all zero, got {obs.tolist()}")
    if np.any(shares <= 0) or not math.isclose(shares.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"expected_shares must be positive and sum to 1, got {shares.tolist()}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    res = stats.chisquare(obs, shares * obs.sum())
    return SRMResult(float(res.statistic), float(res.pvalue), bool(res.pvalue < alpha))


# --------------------------------------------------------------------------------- Benjamini-Hochberg


@dataclass(frozen=True)
class BHResult:
    qvalues: np.ndarray  # [M] BH-adjusted p-values, in the input order
    reject: np.ndarray  # [M] bool: qvalues <= q


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray, q: float = 0.05) -> BHResult:
    """Benjamini-Hochberg (1995) step-up procedure: controls the expected share of false discoveries
    at ``q`` when many metrics or experiments are tested at once (independent or positively dependent
    p-values)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"pvalues must be a non-empty 1-D array, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues must lie in [0, 1]")
    if not 0 < q < 1:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    # q_(i) = min_{j >= i} p_(j) m / j: a running minimum from the largest p-value down
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    qvalues = np.empty(m)
    qvalues[order] = adjusted
    return BHResult(qvalues, qvalues <= q)


# --------------------------------------------------------------------------------------- sample size


def users_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per arm for a two-sided two-sample test to detect a mean difference ``effect`` with
    outcome standard deviation ``sd``: ``2 (z_{1-alpha/2} + z_{power})^2 sd^2 / effect^2``, rounded up
    (normal approximation, equal arms)."""
    if effect == 0 or not math.isfinite(effect):
        raise ValueError(f"effect must be a finite non-zero difference, got {effect}")
    if not sd > 0 or not math.isfinite(sd):
        raise ValueError(f"sd must be positive and finite, got {sd}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha ({alpha}) and power ({power}) must lie in (0, 1)")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return math.ceil(2 * (z * sd / effect) ** 2)


def users_for_power(z: float, users: int, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users in all that a test which measured the statistic ``z`` on ``users`` users would need to reach
    ``power`` at two-sided ``alpha``, for the same effect: ``users ((z_{1-alpha/2} + z_{power}) / |z|)^2``,
    rounded up (normal approximation: a z statistic grows with the square root of the users). Any test works
    (delta-method ratio, paired differences), so two designs compare on what each actually measured."""
    if not math.isfinite(z) or z == 0:
        raise ValueError(f"z must be a finite non-zero statistic, got {z}")
    if users < 2:
        raise ValueError(f"users must be >= 2, got {users}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha ({alpha}) and power ({power}) must lie in (0, 1)")
    target = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return math.ceil(users * (target / abs(z)) ** 2)
