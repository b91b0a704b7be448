"""``ServingState``: everything a running server holds, with no FastAPI inside.

A thin composition: the ``ArmTable`` (versions per arm, the server catalog and id maps), the
``HistoryTail`` (user histories level with the event log), the micro-batcher and two pollers.

Threading model. Everything that mutates shared state (histories, the server's item catalog, the arm
table) runs on the event loop thread; slow work (loading and checksumming a model, building its
index, reading the event log, forward passes) runs in worker threads on immutable inputs. A hot swap
is one assignment of a new arm dict, so a request sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seekrec.evaluation.interleaving import team_draft_interleave
from seekrec.experiments.assignment import Assigner
from seekrec.experiments.definition import ExperimentsConfig
from seekrec.experiments.outcome_stores import open_outcome_log
from seekrec.experiments.outcomes import SHARED, BackgroundWriter, OutcomeLog, ServedList
from seekrec.experiments.rollout_store import RolloutStore, current_stages
from seekrec.online.event_log import (
    Event,
    EventLog,
    EventLogUnavailableError,
    LoggedEvent,
)
from seekrec.online.factory import open_event_log
from seekrec.online.histories import UserHistories
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.retrieval.index import IndexConfig, set_search_threads
from seekrec.serving.arms import ArmModel, ArmTable
from seekrec.serving.batching import MicroBatcher
from seekrec.serving.experiments import ArmAssigner
from seekrec.serving.explore import ClickAttribution, Explorer, ExploreSettings, FeedbackCounts, explore_settings
from seekrec.serving.history_tail import HistoryTail
from seekrec.serving.item_journal import ItemJournal
from seekrec.serving.metrics import ServingMetrics
from seekrec.serving.monitor import TrafficMonitor
from seekrec.serving.predictor import (
    ItemsNotAddableError,
    LoadContext,
    Predictor,
    Query,
    Recommendation,
)
from seekrec.serving.request_log import RequestLog
from seekrec.serving.response_cache import BYPASS, HIT, MISS, CacheMetrics, ResponseCache
from seekrec.serving.rollouts import RolloutController, interleaved_pair, model_arm, model_arms
from seekrec.serving.settings import CURRENT, ServeSettings
from seekrec.timing import StageClock

log = logging.getLogger(__name__)


INTERLEAVED = "interleaved"  # the arm of a request answered by an interleaving experiment's two rankers


@dataclass(frozen=True)
class Served:
    """A recommendation and how it came about: the model arm (``interleaved`` for a merged list), the user's arm
    in each experiment, and for an interleaved list which ranker gave each position (0: first arm, 1: second)."""

    rec: Recommendation
    arm: str
    arms: dict[str, str]
    teams: tuple[int, ...] | None = None
    cache: str | None = None  # response cache: hit, miss or bypass (None: the cache is off)


class NotReadyError(RuntimeError):
    """No model (or no histories) yet for this request; the HTTP layer answers 503."""


class OutageLog:
    """Reports an event-log outage once when it starts and once when it ends, not once per failed
    request or poll: in a storm of retries the log stays readable and the disk does not fill.
    Every failure is still counted (``seekrec_errors{kind="event_log_unavailable"}``)."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics
        self.since: float | None = None  # monotonic time of the first failure of the present outage
        self.failures = 0

    def failed(self, exc: BaseException, where: str) -> None:
        self.metrics.errors.labels(kind="event_log_unavailable").inc()
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.error("event log unavailable (%s): %s; answering 503 with Retry-After until it is back", where, exc)

    def ok(self) -> None:
        if self.since is not None:
            log.warning("event log available again after %.1f s (%d failed calls)",
                        time.monotonic() - self.since, self.failures)
            self.since, self.failures = None, 0


class ServingState:
    """Arms, histories, the event log, the micro-batcher and the background pollers."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.registry = ModelRegistry(settings.registry)
        self.assigner = ArmAssigner(settings.experiment)
        # layered experiments (settings.experiments) replace the single A/B experiment: the model layer's arms
        # are the model arms, and rollout stages come from the shared state files
        self.experiments = ExperimentsConfig.load(settings.experiments) if settings.experiments is not None else None
        self.layered = Assigner(self.experiments) if self.experiments is not None else None
        self.rollouts = RolloutStore(settings.rollout_path) \
            if self.experiments is not None and self.experiments.rollouts else None
        self.controller: RolloutController | None = None
        # exploration arms (params explore_*): clicks per server item id, credited when the item was just shown
        self.feedback = FeedbackCounts()
        self.attribution = ClickAttribution(self.feedback)
        self._explorers: dict[ExploreSettings, Explorer] = {}
        self._requests = itertools.count()  # seeds each request's exploration draws
        self.monitor = TrafficMonitor(metrics)  # the operator metrics of live traffic (docs/operations.md)
        cache_metrics = CacheMetrics(metrics.registry)  # response cache and hot items (docs/serving-cache.md)
        hot_lookups = cache_metrics.requests.labels
        index_config = IndexConfig(hnsw_threshold=settings.ann_threshold, codec=settings.index_codec)
        context = LoadContext(candidates=settings.candidates, index_config=index_config, device=settings.device,
                              compile_encoder=settings.compile, quantize=settings.quantize, data_dir=settings.data_dir,
                              feature_store=settings.feature_store, on_stage=self.monitor.observe_stage,
                              hot_items=settings.hot_items,
                              on_hot_items=lambda result, n: hot_lookups(cache="hot_items", result=result).inc(n))
        arms = model_arms(self.experiments) if self.experiments is not None else settings.experiment.arms
        self.table = ArmTable(self.registry, arms, context, metrics)
        self.tail = HistoryTail(self.table.catalog, settings.history_len, settings.data_dir, self.table.predictors,
                                max_users=settings.max_users, on_sync=metrics.history_syncs.inc)
        self.event_log: EventLog | None = None
        self.outcome_log: OutcomeLog | None = None  # every served list, for experiments (settings.outcome_log)
        self.outcomes: BackgroundWriter | None = None  # writes them off the request path
        self.batcher: MicroBatcher[tuple[ArmModel, Query], Recommendation] = MicroBatcher(
            self._run_batch, settings.max_batch, settings.max_wait_ms, on_batch=metrics.batch_size.observe,
            run_in_thread=settings.device != "cpu", max_queue=settings.max_queue)  # inline is cheaper on a CPU
        self._swap_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.outage = OutageLog(metrics)
        self.journal = ItemJournal(settings.items_journal_path)
        self._journaled: dict[str, dict[str, Any]] = {}  # items of the journal, replayed into new versions
        self._journal_seen: tuple[int, int, int] | None = None  # the journal's signature when last read
        self.failure: str | None = None  # why a background start-up gave up (liveness then fails)
        self._starting: asyncio.Task[None] | None = None
        # response cache (docs/serving-cache.md): history changes and installs invalidate it on the loop thread
        self.responses = ResponseCache(settings.response_cache_size, settings.response_cache_ttl_s, cache_metrics)
        self.tail.on_applied, self.tail.on_rebuilt = self.responses.events_applied, self.responses.histories_rebuilt
        self.request_log: RequestLog | None = None  # settings.request_log, opened at start

    @property
    def arms(self) -> dict[str, ArmModel]:
        return self.table.arms

    @property
    def current_version(self) -> str | None:
        return self.table.current_version

    @property
    def histories(self) -> UserHistories | None:
        return self.tail.histories

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the pinned versions exist (cheap: a mistyped one fails start-up at once), then load.

        With ``background_start`` (the default) loading runs as a task and this returns at once, so
        ``/healthz`` answers while a long event log replays and ``/readyz`` turns 200 when done; a
        failure there is logged and turns ``/healthz`` to 503 so the orchestrator restarts the process.
        Without it, start-up waits for the load and fails on its first error."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
            set_search_threads(self.settings.threads)  # FAISS's own OpenMP pool: 2 threads cost 60x CPU per search
        for arm in self.table.settings:
            if arm.version not in self.table.pointers():
                await asyncio.to_thread(self.registry.manifest, arm.version)  # RegistryError naming it
        self.batcher.start()
        if self.settings.request_log is not None:
            self.request_log = RequestLog(self.settings.request_log, self.settings.request_log_queue,
                                          self.metrics.registry)
        if not self.settings.background_start:
            try:
                await self._load()
            except BaseException:
                await self.stop()  # a failed start-up must not leave the log open or the batcher running
                raise
            return
        self._starting = asyncio.create_task(self._load_in_background(), name="start-up")

    async def _open_outcome_log(self) -> None:
        url = self.settings.outcome_log_url
        if url is None:
            return
        try:
            self.outcome_log = await asyncio.to_thread(open_outcome_log, url)
        except EventLogUnavailableError as exc:  # its store is down: serve anyway, without experiment logs
            self.metrics.errors.labels(kind="outcome_log").inc()
            log.error("outcome log %s unavailable (%s): served lists are not logged until a restart", url, exc)
            return
        lost = self.metrics.outcomes_lost
        self.outcomes = BackgroundWriter(self.outcome_log, self.settings.outcome_queue,
                                         on_lost=lambda count, reason: lost.labels(reason=reason).inc(count))

    def log_served(self, record: ServedList) -> None:
        """Queue a served list for the outcome log; never waits (a full queue drops it and counts it)."""
        if self.outcomes is not None:
            self.outcomes.submit(record)

    async def _load_in_background(self) -> None:
        try:
            await self._load()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported through /healthz and the log, not a dead task
            self.failure = f"start-up failed: {type(exc).__name__}: {exc}"
            self.metrics.errors.labels(kind="startup").inc()
            log.critical("%s; /healthz answers 503 so that the process is restarted", self.failure, exc_info=exc)

    async def _load(self) -> None:
        """Open the log (waiting out an outage when in the background), load pinned versions and
        CURRENT (falling back to the newest good version), build histories, then start polling."""
        started = time.monotonic()
        self.event_log = await self._open_event_log()
        self.tail.event_log = self.event_log
        await self._open_outcome_log()
        self.table.context = dataclasses.replace(self.table.context, event_log=self.event_log)
        self._journal_seen = await asyncio.to_thread(self.journal.signature)  # before reading: a later line is re-read
        self._journaled = await asyncio.to_thread(self.journal.load)
        if self._journaled:
            log.info("%d items added by POST /items are journaled in %s; replaying them into each version",
                     len(self._journaled), self.journal.path)
        loaded, heads = await self.table.load_initial()
        if loaded:
            await self._install(loaded, heads)
        else:
            log.warning("no model in %s yet: not ready until one is published", self.settings.registry)
        self._tasks = [asyncio.create_task(self._every(self.refresh, "model_load"), name="registry-poller"),
                       asyncio.create_task(self._every(self.follow_journal, "items_journal"), name="journal-poller"),
                       asyncio.create_task(self._every(self.tail.catch_up, "event_tail"), name="event-log-tail")]
        if self.rollouts is not None:
            await self._start_rollouts()
        log.info("start-up done in %.1f s (ready: %s)", time.monotonic() - started, self.ready)
        # models, catalogs and histories live as long as the process: moved out of the collector's
        # generations, full collections stop walking them, which would pause requests at scale
        gc.collect()
        gc.freeze()

    async def _start_rollouts(self) -> None:
        """Follow the rollouts' stages; on the controlling replica, start them and judge them periodically."""
        assert self.rollouts is not None and self.experiments is not None and self.event_log is not None
        if self.settings.rollout_controller and self.outcome_log is not None:
            self.controller = RolloutController(self.experiments, self.rollouts, self.outcome_log, self.event_log,
                                                self.settings.attribution_window_s)
            await asyncio.to_thread(self.controller.start)
            self._tasks.append(asyncio.create_task(
                self._every(self.judge_rollouts, "rollout", self.settings.rollout_interval_s), name="rollout-controller"))
        elif self.settings.rollout_controller:
            log.warning("rollout controller off: it reads the outcome log, which is 'off'")
        await self.follow_rollouts()
        self._tasks.append(asyncio.create_task(self._every(self.follow_rollouts, "rollout_state"),
                                               name="rollout-follower"))

    async def follow_rollouts(self) -> bool:
        """Assign with the stages the state files hold now; whether any changed."""
        assert self.rollouts is not None and self.layered is not None
        stages = await asyncio.to_thread(current_stages, self.rollouts, self.layered.config)
        if stages == self.layered.stages:
            return False
        log.info("rollout stages: %s", stages)
        self.layered = self.layered.with_stages(stages)
        return True

    async def judge_rollouts(self) -> None:
        """One look of the controller (outcome and event logs read in a worker thread), then follow it."""
        assert self.controller is not None
        await asyncio.to_thread(self.controller.step)
        await self.follow_rollouts()

    async def _open_event_log(self) -> EventLog:
        """The event log; in the background an unreachable one is retried with backoff (Redis still
        starting, say) rather than failing the process."""
        delay = 0.5
        while True:
            try:
                event_log = await asyncio.to_thread(open_event_log, self.settings.event_log)
            except (EventLogUnavailableError, ConnectionError) as exc:
                if not self.settings.background_start:
                    raise
                self.outage.failed(exc, "opening the event log")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self.outage.ok()
            return event_log

    async def stop(self) -> None:
        """Stop the start-up task, pollers and the batcher, then close the event log."""
        if self._starting is not None:
            self._starting.cancel()
            try:
                await self._starting
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        await self.tail.stop()
        await self.batcher.stop()
        if self.event_log is not None:
            await self.event_log.aclose()
            await asyncio.to_thread(self.event_log.close)
        if self.outcomes is not None:
            await asyncio.to_thread(self.outcomes.close)  # writes what is queued (bounded wait)
        if self.outcome_log is not None:
            await asyncio.to_thread(self.outcome_log.close)
        if self.request_log is not None:
            await asyncio.to_thread(self.request_log.close)  # writes what is queued (bounded wait)

    @property
    def ready(self) -> bool:
        return self.tail.histories is not None and not self.table.missing()

    def not_ready_reason(self) -> str:
        if self.failure is not None:
            return self.failure
        if self.event_log is None:
            return "opening the event log" + (" (unavailable, retrying)" if self.outage.since is not None else "")
        missing = self.table.missing()
        if missing:
            failed = "; ".join(f"{v}: {e}" for v, e in self.table.failed_versions.items())
            return f"no model yet for arm(s) {missing}" + (f" (failed versions: {failed})" if failed else "")
        return "user histories are loading"

    # -- requests ----------------------------------------------------------------------------
    async def recommend(self, user_id: str, k: int, exclude_seen: bool, min_offset: int | None = None) -> Served:
        """The user's recommendation with the arms that produced it; history is read now, so it reflects every event
        this replica acknowledged. Events other replicas acknowledged show once the tail polls them, or at
        once with ``read_your_writes``, or when the request's ``min_offset`` (the offset a POST /events
        answered) is past what this replica applied: then the log is read first. A user of an interleaving
        experiment gets both of its rankers' lists merged by team draft (``teams``: which ranker gave each item)."""
        arms, arm_name, params = self.assign(user_id)
        pair = interleaved_pair(self.layered.config, arms) if self.layered is not None else None
        models = [arm_name] if pair is None else list(pair[1:])
        histories = self.tail.histories
        if histories is None or any(m not in self.table.arms for m in models):
            raise NotReadyError(self.not_ready_reason())
        if self.settings.read_your_writes or (min_offset is not None and histories.offset < min_offset):
            await self._read_other_replicas()
        if pair is not None:
            experiment, first, second = pair
            rec_a, rec_b = await asyncio.gather(*(self._rank(m, user_id, k, exclude_seen) for m in (first, second)))
            rec, teams = self._interleave(rec_a, rec_b, k)
            arms = {**arms, experiment: INTERLEAVED}
            self.metrics.recommendations.labels(arm=INTERLEAVED, version=rec.model_version,
                                                fallback=str(rec.fallback).lower()).inc()
            return Served(rec, INTERLEAVED, arms, teams, self._bypass())
        explorer = self._explorer(params)
        if explorer is not None:
            rec = await self._rank(arm_name, user_id, explorer.candidates_needed(k), exclude_seen)
            rec, cache = self._explore(explorer, rec, k), self._bypass()
        else:
            rec, cache = await self._rank_cached(arm_name, user_id, k, exclude_seen)
        self.metrics.recommendations.labels(arm=arm_name, version=rec.model_version,
                                            fallback=str(rec.fallback).lower()).inc()
        return Served(rec, arm_name, arms, cache=cache)

    async def _rank_cached(self, arm_name: str, user_id: str, k: int, exclude_seen: bool) -> tuple[Recommendation,
                                                                                                   str | None]:
        """``_rank`` through the response cache when the arm's answer is a function of history and model alone."""
        if not self.responses.enabled:
            return await self._rank(arm_name, user_id, k, exclude_seen), None
        model = self.table.arms[arm_name]
        if not getattr(model.predictor, "response_cacheable", False):  # time-dependent or live-feature answers
            return await self._rank(arm_name, user_id, k, exclude_seen), self._bypass()
        missed = False

        async def compute() -> Recommendation:
            nonlocal missed
            missed = True
            return await self._rank(arm_name, user_id, k, exclude_seen)

        rec = await self.responses.serve((user_id, arm_name, k, exclude_seen), model, compute)
        return rec, MISS if missed else HIT

    def _bypass(self) -> str | None:
        """Count a request the response cache cannot answer (randomised or time-dependent); its cache label."""
        if not self.responses.enabled:
            return None
        self.responses.bypass()
        return BYPASS

    async def _rank(self, arm_name: str, user_id: str, k: int, exclude_seen: bool) -> Recommendation:
        """The model of ``arm_name`` ranks for the user's history (batched with other requests when personal)."""
        clock = StageClock(self.monitor.observe_stage)
        model = self.table.arms[arm_name]
        if model.needs_context:  # event-time / action inputs: the events' times and values go along
            items, times, values = model.translate_events(self.tail.events(user_id))
            query = Query(user_id, items, k, exclude_seen, times, values)
        else:
            query = Query(user_id, model.translate(self.tail.get(user_id)), k, exclude_seen)
        clock.lap("history")
        if not query.personal:
            return model.predictor.recommend([query])[0]  # popular items: no forward pass, nothing to batch
        rec = await self.batcher.submit((model, query))
        self.monitor.ranked(arm_name, rec, query.history)
        return rec

    def _interleave(self, rec_a: Recommendation, rec_b: Recommendation, k: int) -> tuple[Recommendation, tuple[int, ...]]:
        """Team-draft interleaving of two rankings (a fresh coin per request for who picks first)."""
        rng = np.random.default_rng([next(self._requests), len(rec_a.item_ids)])
        ids = {item: i for i, item in enumerate(dict.fromkeys((*rec_a.item_ids, *rec_b.item_ids)))}
        raw = list(ids)
        merged = team_draft_interleave([ids[i] for i in rec_a.item_ids], [ids[i] for i in rec_b.item_ids], k, rng)
        scores = {**dict(zip(rec_b.item_ids, rec_b.scores)), **dict(zip(rec_a.item_ids, rec_a.scores))}
        items = tuple(raw[i] for i in merged.ids)
        return (Recommendation(rec_a.user_id, items, tuple(float(scores[i]) for i in items),
                               f"{rec_a.model_version}+{rec_b.model_version}", rec_a.fallback and rec_b.fallback),
                tuple(int(t) + SHARED * int(both) for t, both in zip(merged.teams, merged.shared)))

    def _explorer(self, params: dict[str, Any]) -> Explorer | None:
        """The exploring re-ranker an arm's params ask for (one per distinct setting, sharing the click counts)."""
        settings = explore_settings(params) if params else None
        if settings is None:
            return None
        explorer = self._explorers.get(settings)
        if explorer is None:
            explorer = self._explorers[settings] = Explorer(settings, self.feedback)
        return explorer

    def _explore(self, explorer: Explorer, rec: Recommendation, k: int) -> Recommendation:
        """Re-rank the model's top candidates (server item ids keep the click counts across model swaps)."""
        if rec.fallback or not rec.item_ids:
            return dataclasses.replace(rec, item_ids=rec.item_ids[:k], scores=rec.scores[:k])
        clock = StageClock(self.monitor.observe_stage)
        ids = self.table.catalog.items.encode(rec.item_ids)
        slate = explorer.rerank(ids, np.asarray(rec.scores), k, explorer.request_rng(rec.user_id, next(self._requests)))
        self.attribution.served(rec.user_id, slate.item_ids)
        self.metrics.explored.inc(len(slate.explored_positions))
        positions = slate.positions.tolist()
        clock.lap("rerank")
        return dataclasses.replace(rec, item_ids=tuple(rec.item_ids[i] for i in positions),
                                   scores=tuple(rec.scores[i] for i in positions))

    def track(self, request_id: str, served: Served) -> None:
        """An answered list, for the operator metrics (``TrafficMonitor.served``)."""
        self.monitor.served(request_id, served, self.table.arms.get(served.arm))

    def record_failure(self, user_id: str) -> None:
        """A request of ``user_id`` failed: counted per model arm, and against the arms of their rollouts
        (error-rate guardrail)."""
        self.metrics.recommend_errors.labels(arm=self.assign(user_id)[1]).inc()
        if self.controller is not None and self.layered is not None:
            self.controller.record_error(self.assign(user_id)[0], self.layered.stages)

    def assign(self, user_id: str) -> tuple[dict[str, str], str, dict[str, Any]]:
        """The user's arms (experiment -> arm, what the outcome log records), the model arm that serves them and
        their arms' params (e.g. ``explore_epsilon``)."""
        if self.layered is None:
            arm = self.assigner.assign(user_id).name
            return {self.settings.experiment.name: arm}, arm, {}
        assignment = self.layered.assign(user_id)
        return assignment.arms, model_arm(self.layered.config, assignment.arms), assignment.params

    async def _read_other_replicas(self) -> None:
        """Read-your-writes: apply what other replicas appended before this request (``HistoryTail.sync``).
        A recommendation must not fail because the log is slow or down: past the timeout, or in an
        outage, it is answered from the histories as they are, and the miss is counted."""
        try:
            await asyncio.wait_for(self.tail.sync(), self.settings.read_your_writes_timeout_ms / 1000)
        except asyncio.TimeoutError:
            self.metrics.errors.labels(kind="read_your_writes").inc()
        except EventLogUnavailableError as exc:
            self.metrics.errors.labels(kind="read_your_writes").inc()
            self.outage.failed(exc, "POST /recommend (read your writes)")

    async def add_events(self, events: Sequence[Event], idempotency_key: str | None = None) -> list[int]:
        """Append durably (the offsets are returned only after the log's ``append`` returned), then apply
        to histories at once so the user's next recommendation already excludes the item. A retried
        batch (same ``idempotency_key``) gets its first offsets back and is not written again.
        ``EventLogUnavailableError`` (HTTP 503) while the log's storage is down."""
        if self.event_log is None:
            raise NotReadyError("event log is not open yet")
        try:
            offsets = await asyncio.to_thread(self.event_log.append, list(events), idempotency_key)
        except EventLogUnavailableError as exc:
            self.outage.failed(exc, "POST /events")
            raise
        self.outage.ok()
        self.metrics.events.inc(len(offsets))
        self.monitor.acknowledged(events, offsets)
        logged = [LoggedEvent(e.user_id, e.item_id, e.timestamp, e.event_type, e.value, offset=o)
                  for e, o in zip(events, offsets)]
        if self._explorers:  # the clicks on explored slates feed the Thompson arms' posteriors
            for e in events:
                if e.event_type == "click":
                    self.attribution.event(e.user_id, int(self.table.catalog.items.encode([e.item_id])[0]))
        await self.tail.catch_up(logged)
        return offsets

    async def add_items(self, records: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
        """Cold start: new items (raw id -> title, genres, ...) join every arm that can add items by
        content; returns ``{version: raw ids added}``. ``ItemsNotAddableError`` (HTTP 409) when none
        can: sequence models learn new items from their first events instead."""
        async with self._swap_lock:
            added, adders, refusals = {}, {}, []
            for predictor in self.table.predictors():
                try:
                    added[predictor.version] = await asyncio.to_thread(predictor.add_items, records)
                    adders[predictor.version] = predictor
                except ItemsNotAddableError as exc:
                    refusals.append(str(exc))
            if not adders:
                raise ItemsNotAddableError("no arm can add items by their content: "
                                           + ("; ".join(refusals) or "no model is loaded yet"))
            if any(added.values()):
                # durable before the answer: replayed into every version installed from now on
                await asyncio.to_thread(self.journal.append, records)
                self._journaled.update(records)
                await self._install(adders, {}, replay_items=False)
        return added

    async def follow_journal(self) -> bool:
        """Replicas: items that another replica added with ``POST /items`` (journaled in the shared
        registry) join this one's arms within a poll interval; True when some did."""
        signature = await asyncio.to_thread(self.journal.signature)
        if signature == self._journal_seen:
            return False
        async with self._swap_lock:
            self._journal_seen = signature  # before reading, so a line appended while reading is read next poll
            records = await asyncio.to_thread(self.journal.load)
            fresh = {raw: record for raw, record in records.items() if self._journaled.get(raw) != record}
            if not fresh:
                return False  # this replica's own lines
            adders = {}
            for predictor in self.table.predictors():
                try:
                    await asyncio.to_thread(predictor.add_items, fresh)
                except ItemsNotAddableError:
                    continue  # a sequence model learns new items from their events instead
                adders[predictor.version] = predictor
            self._journaled.update(fresh)
            if adders:
                await self._install(adders, {}, replay_items=False)
            log.info("%d items added by another replica's POST /items joined %d version(s)", len(fresh), len(adders))
            return True

    def _run_batch(self, batch: list[tuple[ArmModel, Query]]) -> list[Recommendation]:
        """Worker thread: one forward per model version present in the batch, results in batch order."""
        groups: dict[int, list[int]] = {}
        for position, (model, _) in enumerate(batch):
            groups.setdefault(id(model.predictor), []).append(position)
        results: list[Recommendation | None] = [None] * len(batch)
        for positions in groups.values():
            predictor = batch[positions[0]][0].predictor
            for position, rec in zip(positions, predictor.recommend([batch[p][1] for p in positions])):
                results[position] = rec
        return [r for r in results if r is not None]

    # -- models ------------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Load and swap in what CURRENT and the arms' channels name now, where it changed; True when a swap
        happened. A channel nothing was published to yet follows CURRENT."""
        if not self.table.wants_current():
            return False
        async with self._swap_lock:
            try:
                current = await asyncio.to_thread(self.registry.current)
            except RegistryError:
                if self.table.pointer_error is not None:
                    return False  # still the unreadable CURRENT reported at start-up: no error per poll
                raise
            self.table.pointer_error = None
            if current is None or current in self.table.failed_versions:
                current = self.table.current_version  # keep serving what serves now
            swapped = False
            for pointer in self.table.pointers():
                head = await asyncio.to_thread(self.table.read_head, pointer, current)
                if head is None or head == self.table.heads.get(pointer) or head in self.table.failed_versions:
                    continue
                predictor = self.table.loaded(head) or await self.table.try_load(head)
                if predictor is None:
                    continue
                await self._install({head: predictor}, {pointer: head})
                self.metrics.swaps.inc()
                log.info("hot-swapped %s to %s", pointer.upper() if pointer == CURRENT else pointer, head)
                swapped = True
            return swapped

    async def _install(self, predictors: dict[str, Predictor], heads: dict[str, str], replay_items: bool = True) -> None:
        """Replay journaled items into the new versions, map their ids, rebuild histories if they must,
        then swap the arms in (``heads``: what the moving arm versions serve from now on)."""
        if replay_items and self._journaled:
            for predictor in predictors.values():
                try:
                    added = await asyncio.to_thread(predictor.add_items, self._journaled)
                except ItemsNotAddableError:
                    continue  # a sequence model learns new items from their events instead
                if added:
                    log.info("%s: %d journaled items replayed", predictor.version, len(added))
        arms, new_raws = await self.table.build(predictors, heads)
        if self.tail.needs_rebuild(new_raws):
            await self.tail.rebuild()
        async with self.tail.lock:
            # a predictor loaded in a worker thread replayed the log up to then; the events since are read
            # here, on the loop and under the lock, so none can slip between this replay and the swap
            if self.event_log is not None:
                for predictor in predictors.values():
                    predictor.replay(self.event_log)
            self.table.swap(arms, heads)
            self.responses.models_installed(self.table.arms)
        self.monitor.installed(predictors)
        self.metrics.set_versions(self.describe_arms())
        self.metrics.ready.set(1 if self.ready else 0)
        await self.tail.catch_up()

    # -- reporting ---------------------------------------------------------------------------
    def describe_arms(self) -> dict[str, dict[str, Any]]:
        """``{arm: Predictor.describe()}`` for arms with a model."""
        return self.table.describe()

    async def update_gauges(self) -> None:
        """Refresh the scrape-time gauges: freshness, the online trainer's event-log lag, and the summaries of
        recent traffic (computed in a worker thread on copies of the bounded windows)."""
        self.metrics.set_versions(self.describe_arms())
        self.metrics.ready.set(1 if self.ready else 0)
        await self.monitor.refresh(dict(self.table.arms))
        if self.event_log is not None:
            consumer = self.settings.trainer_consumer
            self.metrics.lag.labels(consumer=consumer).set(await asyncio.to_thread(self.event_log.lag, consumer))

    async def _every(self, job: Callable[[], Awaitable[object]], kind: str, interval_s: float | None = None) -> None:
        """Run ``job`` every ``interval_s`` (default: the poll interval); a failure is logged and counted, and the
        loop goes on."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s if interval_s is None else interval_s)
            try:
                await job()
            except EventLogUnavailableError as exc:  # an outage: reported once, not every poll
                self.outage.failed(exc, f"{kind} poll")
            except Exception:  # noqa: BLE001 - a poller must survive a bad poll (disk hiccup, log outage)
                self.metrics.errors.labels(kind=kind).inc()
                log.exception("%s poll failed", kind)
