"""The rollout controller: a state machine that ramps a treatment up while its guardrails hold.

A rollout is at stage ``s`` of ``steps`` (the treatment serves ``s / steps`` of the experiment's users)
with a status: ``running`` (the controller decides), ``stopped`` (frozen by an operator at its stage),
``completed`` (100% held) or ``rolled_back`` (stage 0: everyone back on control). At every look the
controller calls ``decide`` on the figures of the users served under the current stage and ``apply``
turns the decision into the next state:

* ``stop_and_rollback``: a guardrail broke (``guardrails.judge``; always-valid, so looking every few
  seconds is safe), or, at the look that would advance, the split of users mismatches the stage's
  (``srm_check``): a broken assignment means no figure can be trusted;
* ``hold``: the stage lacks ``min_users_per_step`` users per arm, ``min_seconds_per_step`` seconds,
  or the users a guardrail is judged on;
* ``advance`` to the next stage, or ``complete`` at 100%, when all of that holds.

Each stage is read on its own users only: users move from control to treatment between stages, so
pooling stages would mix arms. Each stage's test runs at ``alpha / steps``, so the whole rollout rolls a
healthy treatment back with probability at most ``alpha`` per relative guardrail. The state lives in
one JSON file per experiment (``rollout_store.RolloutStore``) that every replica polls.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from seekrec.evaluation.experiments import srm_check
from seekrec.experiments.definition import Experiment, Rollout
from seekrec.experiments.guardrails import ArmFigures, GuardrailCheck, Snapshot, judge

STATUSES = ("running", "completed", "stopped", "rolled_back")
ACTIONS = ("hold", "advance", "complete", "stop", "stop_and_rollback")
OPERATOR_ACTIONS = ("advance", "stop", "rollback")
# the statuses each action may leave; the controller only acts on running rollouts (decide holds otherwise)
_ALLOWED_FROM = {
    "hold": STATUSES,
    "advance": ("running", "stopped", "rolled_back"),  # from rolled_back: an operator restarts the ramp
    "complete": ("running", "stopped"),
    "stop": ("running",),
    "stop_and_rollback": ("running", "stopped", "completed"),
}


@dataclass(frozen=True)
class StageEvent:
    """A decision as recorded in the state: when (Unix seconds), what, the stages, why and by whom."""

    at: float
    action: str
    from_stage: int
    to_stage: int
    reasons: tuple[str, ...] = ()
    source: str = "controller"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} must be one of {ACTIONS}")
        if self.source not in ("controller", "operator"):
            raise ValueError(f"source {self.source!r} must be 'controller' or 'operator'")
        object.__setattr__(self, "reasons", tuple(self.reasons))


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout is; ``revision`` counts writes, so a writer holding an old state is refused.

    ``history``: every change of stage or status; ``last_decision``: the latest look, holds included.
    """

    experiment: str
    steps: int
    stage: int
    status: str
    stage_started_at: float
    revision: int = 0
    history: tuple[StageEvent, ...] = ()
    last_decision: StageEvent | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"rollout status {self.status!r} must be one of {STATUSES}")
        if not (isinstance(self.steps, int) and self.steps >= 1 and isinstance(self.stage, int)
                and 0 <= self.stage <= self.steps):
            raise ValueError(f"rollout {self.experiment!r}: stage {self.stage!r} must lie in 0..steps ({self.steps!r})")
        if (self.status == "rolled_back") != (self.stage == 0):
            raise ValueError(f"rollout {self.experiment!r}: stage 0 (nobody treated) goes with status rolled_back "
                             f"and only with it, got stage {self.stage} {self.status}")
        if not isinstance(self.revision, int) or self.revision < 0:
            raise ValueError(f"rollout {self.experiment!r}: revision must be an integer >= 0, got {self.revision!r}")
        object.__setattr__(self, "history", tuple(self.history))

    @classmethod
    def start(cls, experiment: Experiment, now: float) -> RolloutState:
        """A new rollout at stage 1 (the first step's share), not yet written."""
        rollout = _rollout(experiment)
        started = StageEvent(now, "advance", 0, 1, ("rollout started",), "operator")
        return cls(experiment.name, rollout.steps, 1, "running", now, 0, (started,), started)

    @property
    def treatment_share(self) -> float:
        """The treatment's share of the experiment's users now."""
        return self.stage / self.steps

    def to_json(self) -> dict[str, Any]:
        """The state file's content (``treatment_share`` is derived, for people reading the file)."""
        doc = dataclasses.asdict(self)
        doc["treatment_share"] = self.treatment_share
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RolloutState:
        """Inverse of ``to_json``; ValueError on a missing or unknown key."""
        fields = {f.name for f in dataclasses.fields(cls)}
        body = {k: v for k, v in doc.items() if k != "treatment_share"}
        if set(body) != fields:
            raise ValueError(f"rollout state keys {sorted(body)} differ from {sorted(fields)}")
        body["history"] = tuple(StageEvent(**e) for e in body["history"])
        if body["last_decision"] is not None:
            body["last_decision"] = StageEvent(**body["last_decision"])
        return cls(**body)


@dataclass(frozen=True)
class Decision:
    """What to do at a look, made at ``stage``; ``checks`` are the guardrails' figures behind it."""

    action: str
    stage: int
    reasons: tuple[str, ...]
    checks: tuple[GuardrailCheck, ...] = ()
    source: str = "controller"

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"decision action {self.action!r} must be one of {ACTIONS}")


def _rollout(experiment: Experiment) -> Rollout:
    if experiment.rollout is None:
        raise ValueError(f"experiment {experiment.name!r} has no [rollout] table; add one to roll it out")
    return experiment.rollout


def decide(experiment: Experiment, state: RolloutState, snapshot: Snapshot, now: float) -> Decision:
    """The controller's decision at one look; ``snapshot`` holds the figures of the users served under
    ``state.stage`` only (a snapshot of another stage makes it hold). Pure: reads nothing, writes nothing."""
    rollout = _rollout(experiment)
    if state.experiment != experiment.name or state.steps != rollout.steps:
        raise ValueError(f"state of {state.experiment!r} with {state.steps} steps does not match experiment "
                         f"{experiment.name!r} with {rollout.steps}; roll back and start the rollout again")
    stage = state.stage
    if state.status != "running":
        return Decision("hold", stage, (f"rollout is {state.status}",))
    if snapshot.stage != stage:
        return Decision("hold", stage, (f"figures are of stage {snapshot.stage}, the rollout is at stage {stage}",))
    share = rollout.share(stage)
    control, treatment = snapshot.arm(experiment.control), snapshot.arm(experiment.treatment)  # type: ignore[arg-type]
    # at 100% there is no control to compare with; control users then are a leak, for the SRM check below
    compared = control if share < 1 else ArmFigures(0)
    checks = tuple(judge(g, compared, treatment, alpha=rollout.stage_alpha, tau2=rollout.tau2)
                   for g in experiment.guardrails)
    broken = tuple(c.detail for c in checks if c.status == "broken")
    if broken:
        return Decision("stop_and_rollback", stage, broken, checks)
    waiting = []
    elapsed = now - state.stage_started_at
    if elapsed < rollout.min_seconds_per_step:
        waiting.append(f"{elapsed:.0f} of {rollout.min_seconds_per_step:.0f} s at stage {stage}")
    for name, figures, arm_share in ((experiment.control, control, 1 - share),
                                     (experiment.treatment, treatment, share)):
        if arm_share > 0 and figures.users < rollout.min_users_per_step:
            waiting.append(f"{name} has {figures.users} of {rollout.min_users_per_step} users")
    waiting += [c.detail for c in checks if c.status == "pending"]
    if waiting:
        return Decision("hold", stage, tuple(waiting), checks)
    # checked once per stage, at the look that would move on: repeated looks would multiply its false alarms
    mismatch = _sample_ratio_mismatch(control.users, treatment.users, share, rollout.srm_alpha)
    if mismatch:
        return Decision("stop_and_rollback", stage, (mismatch,), checks)
    held = tuple(c.detail for c in checks if c.status == "ok")
    if stage == rollout.steps:
        return Decision("complete", stage, ("treatment held at 100%", *held), checks)
    return Decision("advance", stage, (f"guardrails held at {share:.0%}", *held), checks)


def _sample_ratio_mismatch(control: int, treatment: int, share: float, alpha: float) -> str | None:
    """A reason when the users per arm do not fit the stage's split (chi-square, ``srm_check``), else None."""
    if share == 1:
        return (f"sample ratio mismatch: {control} control users at 100% treatment" if control else None)
    result = srm_check([control, treatment], [1 - share, share], alpha=alpha)
    if not result.mismatch:
        return None
    return (f"sample ratio mismatch: {control} control / {treatment} treatment users where "
            f"{1 - share:.0%}/{share:.0%} was expected (chi2 {result.statistic:.1f}, p {result.p_value:.2g})")


def apply(state: RolloutState, decision: Decision, now: float) -> RolloutState:
    """The state after ``decision`` (same revision: ``RolloutStore.write`` bumps it). A hold only records
    itself as ``last_decision``; every other action also appends to ``history``."""
    if decision.stage != state.stage:
        raise ValueError(f"decision was made at stage {decision.stage}, the rollout is at stage {state.stage}; "
                         "decide again on the current state")
    if state.status not in _ALLOWED_FROM[decision.action]:
        raise ValueError(f"cannot {decision.action} rollout {state.experiment!r}: it is {state.status}")
    stage, status, started = state.stage, state.status, state.stage_started_at
    if decision.action == "advance":
        if stage >= state.steps:
            raise ValueError(f"rollout {state.experiment!r} is at 100% already; complete it instead of advancing")
        stage, status, started = stage + 1, "running", now
    elif decision.action == "complete":
        if stage != state.steps:
            raise ValueError(f"rollout {state.experiment!r} is at stage {stage} of {state.steps}; only 100% completes")
        status = "completed"
    elif decision.action == "stop":
        status = "stopped"
    elif decision.action == "stop_and_rollback":
        stage, status, started = 0, "rolled_back", now
    event = StageEvent(now, decision.action, state.stage, stage, decision.reasons, decision.source)
    history = state.history if decision.action == "hold" else (*state.history, event)
    return dataclasses.replace(state, stage=stage, status=status, stage_started_at=started, history=history,
                               last_decision=event)


def manual(state: RolloutState, action: str, now: float, reason: str = "") -> RolloutState:
    """An operator's ``advance`` (the next stage; completes at 100%; restarts a rolled-back or resumes a
    stopped rollout), ``stop`` (freeze at this stage) or ``rollback`` (everyone back on control)."""
    if action not in OPERATOR_ACTIONS:
        raise ValueError(f"operator action {action!r} must be one of {OPERATOR_ACTIONS}")
    kind = {"stop": "stop", "rollback": "stop_and_rollback"}.get(action, "advance")
    if kind == "advance" and state.stage == state.steps:
        kind = "complete"
    why = (f"operator {action}" + (f": {reason}" if reason else ""),)
    return apply(state, Decision(kind, state.stage, why, source="operator"), now)
