"""Guardrails judged on one look at an experiment: what each arm did, and whether the treatment broke a limit.

A look may come every few seconds, so the relative guardrails (``ctr``, ``clicks_per_user``) use the
always-valid confidence sequence of the mSPRT (``seekrec.evaluation.sequential``): the chance that it
ever excludes the true effect, over all looks however many, is at most ``alpha``. The guardrail breaks
when the whole interval lies below the allowed drop, so a treatment that is within the drop is flagged
with probability at most ``alpha`` no matter how often the controller peeks. A plain z-test at every
look would flag about a quarter of healthy treatments over 20 looks (docs/experiments.md).

Ceilings (``latency_p99_ms``, ``error_rate``) are operational limits, not estimates: the treatment's
figure above the limit, once it has ``min_users`` users, is a break.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from seekrec.evaluation.experiments import ratio_estimate
from seekrec.evaluation.sequential import confidence_sequence
from seekrec.experiments.definition import Guardrail

CHECK_STATUSES = ("ok", "broken", "pending", "not_applicable")


def _per_user(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be a 1-D array of finite values >= 0, one per user")
    return arr


@dataclass(frozen=True)
class ArmFigures:
    """What one arm did on the users served under the current stage, as the caller read it from outcome logs.

    ``users``: users served in the arm (counted for the sample-ratio check and ``min_users``);
    ``clicks``, ``impressions`` ``[U]``: per user with impressions (U <= users), for CTR with the delta
    method; ``errors`` of ``requests``; ``latency_p99_ms``: None when not measured.
    """

    users: int
    clicks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    impressions: np.ndarray = field(default_factory=lambda: np.zeros(0))
    requests: int = 0
    errors: int = 0
    latency_p99_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("users", "requests", "errors"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"ArmFigures.{name} must be an integer >= 0, got {value!r}")
        clicks, impressions = _per_user(self.clicks, "clicks"), _per_user(self.impressions, "impressions")
        if clicks.shape != impressions.shape or len(clicks) > self.users:
            raise ValueError(f"clicks {clicks.shape} and impressions {impressions.shape} need one value per user, "
                             f"at most users={self.users}")
        if self.errors > self.requests:
            raise ValueError(f"ArmFigures.errors ({self.errors}) cannot exceed requests ({self.requests})")
        if self.latency_p99_ms is not None and not (np.isfinite(self.latency_p99_ms) and self.latency_p99_ms >= 0):
            raise ValueError(f"ArmFigures.latency_p99_ms must be a finite number >= 0 or None, "
                             f"got {self.latency_p99_ms!r}")
        object.__setattr__(self, "clicks", clicks)
        object.__setattr__(self, "impressions", impressions)


@dataclass(frozen=True)
class Snapshot:
    """One look at a rollout: ``arms`` maps arm name -> figures of the users served under ``stage``."""

    stage: int
    arms: Mapping[str, ArmFigures]

    def arm(self, name: str) -> ArmFigures:
        """The figures of arm ``name``; ValueError when the caller left it out."""
        if name not in self.arms:
            raise ValueError(f"snapshot has no figures for arm {name!r}; it has {sorted(self.arms)}")
        return self.arms[name]


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail at one look: ``status`` in ``CHECK_STATUSES`` and a sentence with the figures."""

    metric: str
    status: str
    detail: str


def judge(guardrail: Guardrail, control: ArmFigures, treatment: ArmFigures, *, alpha: float,
          tau2: float) -> GuardrailCheck:
    """Whether ``treatment`` holds ``guardrail`` at this look; ``alpha`` and ``tau2`` set the always-valid
    test of a relative guardrail (its level at this look's stage, and the mSPRT mixture variance)."""
    if guardrail.relative:
        return _judge_drop(guardrail, control, treatment, alpha, tau2)
    name = guardrail.metric
    if treatment.users < guardrail.min_users:
        return GuardrailCheck(name, "pending", f"{name}: treatment has {treatment.users} of the "
                                               f"{guardrail.min_users} users it is judged on")
    if name == "latency_p99_ms":
        value = treatment.latency_p99_ms
        if value is None:
            return GuardrailCheck(name, "pending", "latency_p99_ms: not measured for the treatment yet")
        shown = f"{value:.1f} ms"
    else:
        if treatment.requests == 0:
            return GuardrailCheck(name, "pending", "error_rate: the treatment has served no requests yet")
        value = treatment.errors / treatment.requests
        shown = f"{value:.2%} ({treatment.errors} of {treatment.requests} requests)"
    limit = guardrail.max
    assert limit is not None  # a ceiling guardrail always has max (checked by Guardrail)
    status = "broken" if value > limit else "ok"
    return GuardrailCheck(name, status, f"{name}: treatment {shown} {'above' if status == 'broken' else 'within'} "
                                        f"the limit {limit:g}")


def _judge_drop(guardrail: Guardrail, control: ArmFigures, treatment: ArmFigures, alpha: float,
                tau2: float) -> GuardrailCheck:
    """Relative guardrail: broken when the always-valid interval of treatment / control - 1 lies below -drop.

    The tested quantity is ``margin = R_t / R_c - (1 - drop)``, with delta-method variance
    ``(V_t + (1 - drop)^2 V_c) / R_c^2`` (the arms are independent; R_c is plugged in as V is); it is
    positive while the treatment is within the allowed drop. Unlike the variance of the lift itself,
    this one stays positive when the treatment gets no clicks at all.
    """
    name, drop = guardrail.metric, guardrail.max_relative_drop
    assert drop is not None  # a relative guardrail always has max_relative_drop (checked by Guardrail)
    if control.users == 0:
        return GuardrailCheck(name, "not_applicable", f"{name}: no control users to compare with (100% treatment)")
    if min(control.users, treatment.users) < guardrail.min_users:
        return GuardrailCheck(name, "pending", f"{name}: {control.users} control and {treatment.users} treatment "
                                               f"users; judged from {guardrail.min_users} per arm")
    arms = []
    for figures in (control, treatment):
        if len(figures.clicks) < 2 or figures.impressions.sum() == 0:
            return GuardrailCheck(name, "pending", f"{name}: an arm has fewer than 2 users with impressions")
        den = figures.impressions if name == "ctr" else np.ones_like(figures.clicks)  # clicks_per_user: den = 1
        arms.append(ratio_estimate(figures.clicks, den))
    c, t = arms
    if c.ratio == 0:
        return GuardrailCheck(name, "ok", f"{name}: control has no clicks yet, so there is nothing to drop from")
    keep = 1 - drop
    margin = t.ratio / c.ratio - keep
    variance = (t.variance + keep**2 * c.variance) / c.ratio**2
    if variance > 0:
        cs = confidence_sequence(np.array([margin]), np.array([variance]), tau2, alpha)
        low, high = float(cs.lower[0]), float(cs.upper[0])
    else:  # no variation in either arm: the figures are what they are
        low = high = margin
    status = "broken" if high < 0 else "ok"
    return GuardrailCheck(name, status, (
        f"{name}: treatment {t.ratio:.4g} vs control {c.ratio:.4g} ({t.ratio / c.ratio - 1:+.1%}, always-valid "
        f"{1 - alpha:.1%} interval [{low - drop:+.1%}, {high - drop:+.1%}]; allowed drop {drop:.0%}; "
        f"{control.users} control / {treatment.users} treatment users)"))
