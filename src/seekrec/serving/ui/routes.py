"""``/ui``: the console's pages (static files of this package) and ``/ui/api``, the JSON they read.

Reading endpoints take the roles their API counterparts take (``read`` for a user's list, ``metrics`` for
the Live figures); the console's admin actions take an admin key and are refused outright when the server
has none configured, even on an open loopback server (``require_configured``).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from seekrec.experiments.attribution import Outcome
from seekrec.experiments.rollout import RolloutState
from seekrec.online.event_log import EventLogUnavailableError
from seekrec.registry import RegistryError
from seekrec.serving.auth import KeyStore, Role, require, require_configured
from seekrec.serving.exposure import public_detail
from seekrec.serving.metrics import published_at
from seekrec.serving.routes import get_state
from seekrec.serving.routes.recommend import recommend
from seekrec.serving.schemas import RecommendRequest
from seekrec.serving.state import ServingState
from seekrec.serving.ui.experiments import CONFIDENCE, WINDOW_S, definitions, experiment_view, read_outcomes
from seekrec.serving.ui.explain import explain
from seekrec.serving.ui.items import ItemTable
from seekrec.serving.ui.live import LiveWindow
from seekrec.serving.ui.models import models_view
from seekrec.serving.ui.schemas import (
    ExperimentsView,
    ExperimentView,
    ItemView,
    LiveView,
    ModelAction,
    ModelsView,
    Published,
    Session,
    TryView,
    UserRow,
    Users,
)

ADMIN_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no API key sent"},
    403: {"description": "the key is not an admin key, or the server has no admin key configured (then the "
                         "console's admin actions are disabled)"},
    409: {"description": "refused by the registry (unknown version, nothing to roll back to)"},
}
FRESHNESS_SLO_S = 30.0  # docs/operations.md: the SeekrecFreshnessSLO alert's objective
HISTORY_SHOWN = 10
EXPERIMENTS_CACHE_S = 2.0  # the page polls every 5 s; several tabs share one reading of the logs
State = Annotated[ServingState, Depends(get_state)]
UserId = Annotated[str, Path(min_length=1, max_length=256)]

router = APIRouter(prefix="/ui", tags=["console"])


def install(app: FastAPI) -> None:
    """Add the console's routes and pages to ``app`` (the API routes before the static mount, which would
    otherwise answer every path under ``/ui``)."""
    app.state.console_live = LiveWindow(app.state.metrics)
    app.state.console_items = None  # the dataset's item table, read on first use
    app.state.console_experiments = (-math.inf, None)  # (monotonic time, ExperimentsView) of the last reading
    app.state.console_experiments_lock = asyncio.Lock()  # one reading of the logs at a time
    app.include_router(router)
    app.mount("/ui", StaticFiles(packages=[("seekrec.serving.ui", "static")]), name="console")


@router.get("", include_in_schema=False)
async def index() -> RedirectResponse:
    return RedirectResponse("/ui/try.html")


@router.get("/api/session", response_model=Session)
async def session(request: Request) -> Session:
    """Answered without a key: the page must know whether to ask for one."""
    keys: KeyStore = request.app.state.keys
    admin = keys.enabled and keys.count(Role.ADMIN) > 0
    note = ("type an admin key into the key field to use the admin buttons" if admin else
            "admin actions are disabled: the server was started without an admin key (configure one with "
            "--api-keys-file or SEEKREC_API_KEYS; `seekrec keys new admin` makes one)")
    return Session(keys_required=keys.enabled, admin_enabled=admin, admin_note=note, freshness_slo_s=FRESHNESS_SLO_S)


async def _items(request: Request, state: ServingState) -> ItemTable:
    table = request.app.state.console_items
    if table is None:
        table = request.app.state.console_items = await asyncio.to_thread(ItemTable.read, state.settings.data_dir)
    return table


@router.get("/api/users", response_model=Users, dependencies=[Depends(require(Role.READ))])
async def users(state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Users:
    """Users the server keeps a history for, most recently active first."""
    histories = state.histories
    if histories is None:
        return Users(users=[], total=0)
    return Users(users=[UserRow(user_id=u, history_len=n) for u, n in histories.recent(limit)], total=len(histories))


@router.get("/api/try/{user_id}", response_model=TryView, dependencies=[Depends(require(Role.READ))])
async def try_user(user_id: UserId, request: Request, state: State,
                   k: Annotated[int, Query(ge=1, le=50)] = 10) -> TryView:
    """A real ``/recommend`` answer for ``user_id`` (logged and attributable like any other), with titles,
    the user's recent items and, where the arm's model can tell, why."""
    answer = await recommend(RecommendRequest(user_id=user_id, k=k), state)
    table = await _items(request, state)
    server_history = state.tail.get(user_id)
    recent = state.table.catalog.items.decode(server_history[::-1][:HISTORY_SHOWN]) if server_history else []
    raws = [i.item_id for i in answer.items]
    model = state.arms.get(answer.arm)
    reasons = explain(model, server_history, raws) if model is not None and not answer.fallback else None

    def view(raw: str, score: float | None = None, because: str | None = None) -> ItemView:
        facts = table.get(raw)
        return ItemView(item_id=raw, title=facts.title, genres=list(facts.genres), year=facts.year, score=score,
                        because=None if because is None else table.get(because).title)

    items = [view(i.item_id, i.score, reasons.per_item[n] if reasons else None) for n, i in enumerate(answer.items)]
    served = state.describe_arms().get(answer.arm, {})
    histories = state.histories
    return TryView(user_id=user_id, request_id=answer.request_id, model_version=answer.model_version, arm=answer.arm,
                   arms=answer.arms, fallback=answer.fallback, items=items, history=[view(r) for r in recent],
                   weighs_most=[view(r) for r in reasons.top_history] if reasons else [],
                   published_at=served.get("published_at") or served.get("created"),
                   trained_through=served.get("offset"), applied_offset=histories.offset if histories else 0)


@router.get("/api/live", response_model=LiveView, dependencies=[Depends(require(Role.METRICS))])
async def live(request: Request, state: State) -> LiveView:
    """QPS, latency and freshness over the last ``window_s``, with the trainer's lag and the served versions."""
    figures = request.app.state.console_live.figures()
    lag = None
    if state.event_log is not None:
        lag = await asyncio.to_thread(state.event_log.lag, state.settings.trainer_consumer)
    now, arms = time.time(), state.describe_arms()
    ages = {arm: now - t for arm, info in arms.items() if (t := published_at(info)) is not None}
    infos = await asyncio.to_thread(state.registry.versions)
    published = [Published(time=t, version=i.version) for i in infos
                 if (t := published_at({"created": i.created})) is not None]

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000

    return LiveView(window_s=figures.seconds, qps=figures.qps, events_per_s=figures.events_per_s,
                    latency_p50_ms=ms(figures.latency_p50), latency_p99_ms=ms(figures.latency_p99),
                    freshness_p50_s=figures.freshness_p50, freshness_p99_s=figures.freshness_p99,
                    freshness_pending=len(state.monitor.pending), event_log_lag=lag, model_age_s=ages,
                    served={arm: info["version"] for arm, info in arms.items()}, published=published, server_time=now)


@router.get("/api/experiments", response_model=ExperimentsView, dependencies=[Depends(require(Role.READ))])
async def experiments(request: Request, state: State) -> ExperimentsView:
    """Every experiment's arms and, from the lists served in the last ``WINDOW_S`` and the events answering
    them, per-arm figures, the CTR timeline with bands, the always-valid p-value, the sample-ratio check and,
    for a rollout, its stage and history. The logs are read in a worker thread, one reading at a time."""
    async with request.app.state.console_experiments_lock:
        at, view = request.app.state.console_experiments
        if view is None or time.monotonic() - at > EXPERIMENTS_CACHE_S:
            view = await _experiments(state)
            request.app.state.console_experiments = (time.monotonic(), view)
    return view


async def _experiments(state: ServingState) -> ExperimentsView:
    config = state.layered.config if state.layered is not None else None
    rollouts: dict[str, RolloutState | None] = {}
    if state.rollouts is not None and config is not None:
        for experiment in config.rollouts:
            rollouts[experiment.name] = await asyncio.to_thread(state.rollouts.read, experiment.name)
    found = definitions(config, state.settings.experiment, rollouts)
    until = time.time()
    since = until - WINDOW_S
    outcomes: list[Outcome] = []
    events, truncated, note = 0, False, None
    if state.outcome_log is None or state.event_log is None:
        note = ("no outcome log (the server was started with --outcome-log off, or its store was down at start)"
                if state.event_log is not None
                else "the server is still starting: the logs are not open yet")
    else:
        try:
            outcomes, events, truncated = await asyncio.to_thread(read_outcomes, state.outcome_log, state.event_log,
                                                                  since, until)
        except EventLogUnavailableError as exc:
            note = public_detail(f"the logs could not be read: {exc}", "console experiments")

    def compute() -> list[ExperimentView]:  # numpy over up to MAX_LISTS lists: off the event loop too
        return [experiment_view(d, outcomes, rollouts.get(d.name), state.layered) for d in found]

    views = await asyncio.to_thread(compute)
    return ExperimentsView(since=since, until=until, lists=len(outcomes), events=events, truncated=truncated,
                           alpha=1 - CONFIDENCE, note=note, experiments=views)


@router.get("/api/models", response_model=ModelsView, dependencies=[Depends(require(Role.READ))])
async def models(state: State) -> ModelsView:
    """Registry versions with their metrics, which arm serves which, and the training curves."""
    served = {arm: info["version"] for arm, info in state.describe_arms().items()}
    return await asyncio.to_thread(models_view, state.registry, served)


@router.post("/api/models/{version}/promote", response_model=ModelAction, responses=ADMIN_ACTION_ERRORS,
             dependencies=[Depends(require_configured(Role.ADMIN))])
async def promote(version: Annotated[str, Path(max_length=64)], state: State) -> ModelAction:
    """Point CURRENT at ``version``; every server following CURRENT swaps within a poll interval."""
    try:
        await asyncio.to_thread(state.registry.promote, version)
    except RegistryError as exc:
        raise HTTPException(status_code=409, detail=public_detail(str(exc), "refused by the registry")) from exc
    await state.refresh()
    return ModelAction(current=state.registry.current(), detail=f"promoted {version}")


@router.post("/api/models/rollback", response_model=ModelAction, responses=ADMIN_ACTION_ERRORS,
             dependencies=[Depends(require_configured(Role.ADMIN))])
async def rollback(state: State) -> ModelAction:
    """CURRENT back to the version before it (``seekrec registry rollback``)."""
    try:
        version = await asyncio.to_thread(state.registry.rollback)
    except RegistryError as exc:
        raise HTTPException(status_code=409, detail=public_detail(str(exc), "refused by the registry")) from exc
    await state.refresh()
    return ModelAction(current=version, detail=f"rolled back to {version}")
