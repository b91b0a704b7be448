"""The Experiments page's view: every experiment the server assigns users to, its arms and, from the logs of the
recent window, per-arm figures, the CTR over time with confidence bands, each treatment's always-valid p-value,
the sample-ratio check and, for a rollout, its stage and history (``seekrec.experiments.report`` does the
arithmetic, as for ``seekrec experiment report``).

Reading the outcome log and the event log is blocking and can be slow, so ``read_outcomes`` runs in a worker
thread and reads at most ``MAX_LISTS`` served lists and the newest ``MAX_EVENTS`` events of the window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seekrec.evaluation.experiments import srm_check
from seekrec.experiments.assignment import Assigner
from seekrec.experiments.attribution import EventRecord, Outcome, attribute
from seekrec.experiments.definition import ExperimentsConfig
from seekrec.experiments.metrics import ArmTimeline, arm_metrics
from seekrec.experiments.outcomes import OutcomeLog
from seekrec.experiments.report import build_report, interleaving_report
from seekrec.experiments.rollout import RolloutState
from seekrec.online.event_log import EventLog
from seekrec.serving.settings import ExperimentSettings
from seekrec.serving.ui.schemas import (
    ArmRow,
    ArmSeries,
    ExperimentView,
    InterleavingView,
    RolloutView,
    SrmView,
    StageRow,
)

WINDOW_S = 3600.0  # the served lists the page reports on: the last hour
ATTRIBUTION_WINDOW_S = 1800.0  # an event without a request id answers the user's latest list this recent
MAX_LISTS = 200_000  # served lists read per look (the window's first ones beyond it are kept, and said so)
MAX_EVENTS = 500_000  # the newest events of the log read per look
READ_PAGE = 10_000
LOOKS = 60  # points of the timelines: the window's span cut into this many buckets
MIN_BUCKET_S = 1.0
CONFIDENCE = 0.95  # bands, confidence sequences and the p-value chart's alpha line (1 - CONFIDENCE)
SRM_ALPHA = 0.001  # srm_check's default: a mismatch is a broken assignment, not a close call


@dataclass(frozen=True)
class Definition:
    """One experiment as the page describes it, whatever configured it (layers or the single ``--arm`` A/B)."""

    name: str
    layer: str
    kind: str  # "ab", "rollout" or "interleave"
    control: str
    arms: tuple[tuple[str, str | None, float | None, dict[str, Any]], ...]  # (name, version, share, params)
    description: str = ""
    srm_alpha: float = SRM_ALPHA


def definitions(config: ExperimentsConfig | None, single: ExperimentSettings,
                rollouts: dict[str, RolloutState | None]) -> list[Definition]:
    """The experiments of ``config`` (layered) or the single A/B ``single``; a rollout's shares are its stage's."""
    if config is None:
        total = sum(a.weight for a in single.arms)
        return [Definition(single.name, single.name, "ab", single.arms[0].name,
                           tuple((a.name, a.version, a.weight / total, {}) for a in single.arms))]
    found = []
    for layer in config.layers:
        for e in layer.experiments:
            assert e.control is not None  # set by Experiment.__post_init__
            if e.rollout is not None:
                state = rollouts.get(e.name)
                share = None if state is None else state.treatment_share
                arms = tuple((a.name, a.version,
                              None if share is None else (1 - share if a.name == e.control else share),
                              dict(a.params)) for a in e.arms)
                found.append(Definition(e.name, layer.name, "rollout", e.control, arms, e.description,
                                        e.rollout.srm_alpha))
            else:
                found.append(Definition(e.name, layer.name, "interleave" if e.interleave else "ab", e.control,
                                        tuple((a.name, a.version, a.share, dict(a.params)) for a in e.arms),
                                        e.description))
    return found


def read_outcomes(outcome_log: OutcomeLog, event_log: EventLog, since: float, until: float) -> tuple[list[Outcome],
                                                                                                    int, bool]:
    """The lists served in ``[since, until)`` with the events that answer them: ``(outcomes, events read,
    truncated)``; ``truncated`` when the window held more than ``MAX_LISTS`` lists. Blocking."""
    served = list(itertools.islice(outcome_log.read(since_time=since, until_time=until), MAX_LISTS + 1))
    truncated = len(served) > MAX_LISTS
    served = served[:MAX_LISTS]
    events: list[EventRecord] = []
    after = max(0, event_log.end_offset() - MAX_EVENTS)
    while batch := event_log.read(after, limit=READ_PAGE):
        events += [EventRecord.from_event(e) for e in batch if e.timestamp >= since]
        after = batch[-1].offset
    return attribute(served, events, ATTRIBUTION_WINDOW_S), len(events), truncated


def experiment_view(d: Definition, outcomes: Sequence[Outcome], rollout: RolloutState | None,
                    assigner: Assigner | None) -> ExperimentView:
    """What the page shows of ``d`` from ``outcomes`` (the window's attributed lists). ``assigner``: the
    server's assignment at its current stages, which tells a rollout's lists of this stage from the rest."""
    mine = [o for o in outcomes if o.served.arm(d.name) is not None]
    view = ExperimentView(name=d.name, layer=d.layer, kind=d.kind, description=d.description, control=d.control,
                          arms=[], timeline=[], srm=None, rollout=_rollout_view(rollout), interleaving=None)
    if d.kind == "interleave":
        found = interleaving_report(mine, d.name, CONFIDENCE)
        view.interleaving = None if found is None else InterleavingView(**{k: _num(v) if isinstance(v, float) else v
                                                                          for k, v in found.items()})
        view.arms = [ArmRow(name=n, version=v, share=s, params=p) for n, v, s, p in d.arms]
        return view
    catalog = max(1, len({item for o in mine for item in o.served.items}))
    seen = arm_metrics(mine, d.name, catalog) if mine else {}
    shares = {n: s for n, _, s, _ in d.arms if s is not None and s > 0}
    comparisons: dict[str, Any] = {}
    timelines: dict[str, ArmTimeline] = {}
    if d.control in seen:
        span = mine[-1].served.time - mine[0].served.time
        report = build_report(mine, d.name, d.control, catalog_size=catalog, bucket_s=max(MIN_BUCKET_S, span / LOOKS))
        comparisons, timelines = report.comparisons, report.timelines
    for name, version, share, params in d.arms:
        m = seen.get(name)
        t = timelines.get(name)
        c = comparisons.get(name, {}).get("ctr")
        view.arms.append(ArmRow(
            name=name, version=version, share=share, params=params, users=m.users if m else 0,
            lists=m.n_requests if m else 0, clicks=int(m.clicks.sum()) if m else 0, ctr=_num(m.ctr) if m else None,
            ctr_low=_last(t.ctr_low) if t else None, ctr_high=_last(t.ctr_high) if t else None,
            diff=_num(c["diff"]) if c else None, diff_low=_num(c["ci_low"]) if c else None,
            diff_high=_num(c["ci_high"]) if c else None, p_value=_num(c["p_value"]) if c else None,
            p_value_sequential=_last(t.p_value) if t is not None and t.p_value is not None else None))
        if t is not None:
            view.timeline.append(ArmSeries(arm=name, times=[float(x) for x in t.times], ctr=_nums(t.ctr),
                                           ctr_low=_nums(t.ctr_low), ctr_high=_nums(t.ctr_high),
                                           p_value=None if t.p_value is None else _nums(t.p_value)))
    if d.kind == "rollout":
        view.srm = _stage_srm(d, mine, rollout, assigner)
    elif len(shares) >= 2 and len(shares) == len(d.arms):
        view.srm = _srm([n for n, *_ in d.arms], [seen[n].users if n in seen else 0 for n, *_ in d.arms],
                        [shares[n] for n, *_ in d.arms], d.srm_alpha, "users served in the window")
    return view


def _stage_srm(d: Definition, outcomes: Sequence[Outcome], rollout: RolloutState | None,
               assigner: Assigner | None) -> SrmView | None:
    """The rollout's check, as its controller makes it: users of this stage's lists (served since it began, in
    the arm the user has at this stage) against the stage's split; None at 0% or 100% (one arm only)."""
    if rollout is None or not 0 < rollout.treatment_share < 1:
        return None
    users: dict[str, set[str]] = {n: set() for n, *_ in d.arms}
    for o in outcomes:
        arm = o.served.arm(d.name)
        if o.served.time >= rollout.stage_started_at and arm in users and (
                assigner is None or assigner.assign(o.served.user_id).arms.get(d.name) == arm):
            users[arm].add(o.served.user_id)
    names = [n for n, *_ in d.arms]
    share = rollout.treatment_share
    return _srm(names, [len(users[n]) for n in names], [1 - share if n == d.control else share for n in names],
                d.srm_alpha, f"users served at stage {rollout.stage} (since it began)")


def _srm(arms: list[str], users: list[int], expected: list[float], alpha: float, scope: str) -> SrmView:
    if sum(users) == 0:
        return SrmView(arms=arms, users=users, expected=expected, p_value=None, mismatch=False, alpha=alpha,
                       scope=scope)
    check = srm_check(users, expected, alpha=alpha)
    return SrmView(arms=arms, users=users, expected=expected, p_value=_num(check.p_value), mismatch=check.mismatch,
                   alpha=alpha, scope=scope)


def _rollout_view(state: RolloutState | None) -> RolloutView | None:
    if state is None:
        return None

    def row(e: Any) -> StageRow:
        return StageRow(at=e.at, action=e.action, from_stage=e.from_stage, to_stage=e.to_stage,
                        reasons=list(e.reasons), source=e.source)

    return RolloutView(stage=state.stage, steps=state.steps, status=state.status,
                       treatment_share=state.treatment_share, stage_started_at=state.stage_started_at,
                       history=[row(e) for e in state.history],
                       last_decision=None if state.last_decision is None else row(state.last_decision))


def _num(value: float) -> float | None:
    """JSON has no nan: a figure that cannot be computed yet is null."""
    return float(value) if value is not None and math.isfinite(value) else None


def _nums(values: np.ndarray) -> list[float | None]:
    return [_num(v) for v in values.tolist()]


def _last(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else None
