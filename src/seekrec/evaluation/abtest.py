"""A/B test statistics: difference of means with Welch's t-test and confidence interval.

Welch's test does not assume equal variances in the two arms, which matters when one arm's
model changes during the experiment (its click-through variance drifts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ABReport:
    mean_a: float
    mean_b: float
    n_a: int
    n_b: int
    diff: float  # mean_b - mean_a
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    relative_lift: float  # diff / mean_a (nan when mean_a is 0)

    def summary(self, name_a: str = "A", name_b: str = "B", confidence: float = 0.95) -> str:
        return (f"{name_a}: {self.mean_a:.4f} (n={self.n_a})  {name_b}: {self.mean_b:.4f} (n={self.n_b})  "
                f"diff {self.diff:+.4f} [{confidence:.0%} CI {self.ci_low:+.4f}, {self.ci_high:+.4f}]  "
                f"lift {self.relative_lift:+.1%}  Welch t={self.t:.2f} p={self.p_value:.2g}")


def welch_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> ABReport:
    """Compare per-unit outcomes (e.g. per-request CTR) of arm ``a`` (control) and ``b``.

    The confidence interval uses the Welch-Satterthwaite degrees of freedom, consistent with the
    test's p-value.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"each arm needs at least 2 observations (got {len(a)} and {len(b)})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("observations must be finite")
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie in (0, 1)")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = b.mean() - a.mean()
    se = np.sqrt(va + vb)
    if se == 0:
        t, p, dof = (0.0, 1.0, float(len(a) + len(b) - 2)) if diff == 0 else (np.copysign(np.inf, diff), 0.0, 1.0)
        half = 0.0
    else:
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
        t = diff / se
        p = float(2 * stats.t.sf(abs(t), dof))
        half = float(stats.t.ppf(0.5 + confidence / 2, dof) * se)
    lift = diff / a.mean() if a.mean() != 0 else float("nan")
    return ABReport(float(a.mean()), float(b.mean()), len(a), len(b), float(diff), float(diff - half),
                    float(diff + half), float(t), float(p), float(lift))
