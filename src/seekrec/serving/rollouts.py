"""Layered experiments in the server: which model arm a user's assignment picks, and the rollout controller
that judges each running rollout from the logs and moves it (``seekrec.experiments.rollout``).

Every replica assigns users with the rollout stages it last read from the shared state files
(``RolloutStore``, polled each ``poll_interval_s``). One replica (``rollout_controller``, on by default)
also runs the controller every ``rollout_interval_s``: it reads the served lists of the current stage from
the outcome log and the events since from the event log, attributes the events, and writes the decision
(hold, advance, stop and roll back, complete) to the state file, which every replica then follows. The
state file's revision check makes a second controller harmless: a decision made on a stale state is refused.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from seekrec.experiments.assignment import Assigner
from seekrec.experiments.attribution import EventRecord, Outcome, attribute
from seekrec.experiments.definition import CURRENT, Experiment, ExperimentsConfig
from seekrec.experiments.guardrails import ArmFigures, Snapshot
from seekrec.experiments.outcomes import OutcomeLog
from seekrec.experiments.rollout import Decision
from seekrec.experiments.rollout_store import RolloutStore, controller_step, current_stages
from seekrec.online.event_log import EventLog
from seekrec.serving.settings import ArmSettings

log = logging.getLogger(__name__)
DEFAULT_ARM = "default"  # serves CURRENT to users whose model layer holds no experiment for them
READ_PAGE = 5000


def model_arms(config: ExperimentsConfig) -> tuple[ArmSettings, ...]:
    """The arms the server loads models for: every arm of the layer that sets versions (at most one layer
    does), plus ``default`` (CURRENT) for users outside that layer's experiments."""
    arms = [ArmSettings(arm.name, arm.version or CURRENT) for layer in config.layers if layer.sets_version
            for experiment in layer.experiments for arm in experiment.arms]
    names = [a.name for a in arms]
    if len(set(names)) != len(names) or DEFAULT_ARM in names:
        raise ValueError(f"the arms of the model layer must have distinct names other than {DEFAULT_ARM!r}, got {names}")
    return (*arms, ArmSettings(DEFAULT_ARM, CURRENT))


def model_arm(config: ExperimentsConfig, arms: dict[str, str]) -> str:
    """The model arm of a user whose experiment arms are ``arms`` (experiment -> arm)."""
    for layer in config.layers:
        if layer.sets_version:
            for experiment in layer.experiments:
                if experiment.name in arms and experiment.arm(arms[experiment.name]).version is not None:
                    return arms[experiment.name]
    return DEFAULT_ARM


def interleaved_pair(config: ExperimentsConfig, arms: dict[str, str]) -> tuple[str, str, str] | None:
    """``(experiment, first arm, second arm)`` when the user is in an interleaving experiment of the model layer."""
    for layer in config.layers:
        if layer.sets_version:
            for experiment in layer.experiments:
                if experiment.interleave and experiment.name in arms:
                    return experiment.name, experiment.arms[0].name, experiment.arms[1].name
    return None


def snapshot(experiment: Experiment, stage: int, outcomes: Sequence[Outcome],
             errors: dict[str, int] | None = None) -> Snapshot:
    """Per-arm figures of ``outcomes`` (served at ``stage``): users, per-user clicked / shown items, lists,
    errors (counted by this replica) and the p99 latency of the lists."""
    by_arm: dict[str, dict[str, list[int]]] = {a.name: defaultdict(lambda: [0, 0]) for a in experiment.arms}
    latencies: dict[str, list[float]] = {a.name: [] for a in experiment.arms}
    for outcome in outcomes:
        arm = outcome.served.arm(experiment.name)
        if arm not in by_arm:
            continue
        user = by_arm[arm][outcome.served.user_id]
        user[0] += outcome.clicked
        user[1] += outcome.shown
        latencies[arm].append(outcome.served.latency_ms)
    figures = {}
    for arm, users in by_arm.items():
        counts = np.array(list(users.values()), dtype=np.float64).reshape(-1, 2)
        lat = latencies[arm]
        figures[arm] = ArmFigures(users=len(users), clicks=counts[:, 0], impressions=counts[:, 1],
                                  requests=len(lat) + (errors or {}).get(arm, 0), errors=(errors or {}).get(arm, 0),
                                  latency_p99_ms=float(np.percentile(lat, 99)) if lat else None)
    return Snapshot(stage, figures)


class RolloutController:
    """Judges every running rollout of ``config`` from the logs and applies the decisions to ``store``."""

    def __init__(self, config: ExperimentsConfig, store: RolloutStore, outcome_log: OutcomeLog, event_log: EventLog,
                 window_s: float) -> None:
        self.config, self.store, self.outcome_log, self.event_log = config, store, outcome_log, event_log
        self.window_s = window_s
        self.after = 0  # the event log offset read so far
        self.events: list[EventRecord] = []
        self.errors: dict[tuple[str, str, int], int] = defaultdict(int)  # (experiment, arm, stage) -> failures

    def start(self, now: float | None = None) -> None:
        """Start every rollout that has no state file yet (at stage 1)."""
        for experiment in self.config.rollouts:
            if self.store.read(experiment.name) is None:
                self.store.start(experiment, time.time() if now is None else now)

    def record_error(self, arms: dict[str, str], stages: dict[str, int]) -> None:
        """A request of a user in these arms failed (counted for the error-rate guardrail)."""
        for experiment, arm in arms.items():
            self.errors[(experiment, arm, stages.get(experiment, 0))] += 1

    def step(self, now: float | None = None) -> list[Decision]:
        """One look at every running rollout; returns the decisions taken."""
        now = time.time() if now is None else now
        while batch := self.event_log.read(self.after, limit=READ_PAGE):
            self.events += [EventRecord.from_event(e) for e in batch]
            self.after = batch[-1].offset
        stages = current_stages(self.store, self.config)
        assigner = Assigner(self.config, stages)
        decisions, oldest = [], now
        for experiment in self.config.rollouts:
            state = self.store.read(experiment.name)
            if state is None or state.status != "running":
                continue
            since = state.stage_started_at
            oldest = min(oldest, since)
            # lists served under this stage: a user's arm at the stage, served after it began (a replica may
            # still have served the previous stage's arm for a poll interval: those are left out)
            served = [s for s in self.outcome_log.read(since_time=since)
                      if s.arm(experiment.name) is not None
                      and assigner.assign(s.user_id).arms.get(experiment.name) == s.arm(experiment.name)]
            events = [e for e in self.events if e.time >= since]
            errors = {arm: n for (name, arm, stage), n in self.errors.items()
                      if name == experiment.name and stage == state.stage}
            look = snapshot(experiment, state.stage, attribute(served, events, self.window_s), errors)
            decision, new_state = controller_step(self.store, experiment, look, now)
            if decision.action != "hold":
                log.warning("rollout %s: %s at stage %d -> %d (%s)", experiment.name, decision.action, state.stage,
                            new_state.stage, "; ".join(decision.reasons))
            decisions.append(decision)
        self.events = [e for e in self.events if e.time >= oldest - self.window_s]
        return decisions
