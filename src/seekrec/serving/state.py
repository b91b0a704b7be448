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
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from seekrec.online.event_log import Event, EventLog, LoggedEvent
from seekrec.online.factory import open_event_log
from seekrec.online.histories import UserHistories
from seekrec.registry import ModelRegistry
from seekrec.retrieval.index import IndexConfig, set_search_threads
from seekrec.serving.arms import ArmModel, ArmTable
from seekrec.serving.batching import MicroBatcher
from seekrec.serving.experiments import ArmAssigner
from seekrec.serving.history_tail import HistoryTail
from seekrec.serving.metrics import ServingMetrics
from seekrec.serving.predictor import (
    ItemsNotAddableError,
    LoadContext,
    Predictor,
    Query,
    Recommendation,
)
from seekrec.serving.settings import ServeSettings

log = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """No model (or no histories) yet for this request; the HTTP layer answers 503."""


class ServingState:
    """Arms, histories, the event log, the micro-batcher and the background pollers."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.registry = ModelRegistry(settings.registry)
        self.assigner = ArmAssigner(settings.experiment)
        context = LoadContext(candidates=settings.candidates, index_config=IndexConfig(hnsw_threshold=settings.ann_threshold),
                              device=settings.device, compile_encoder=settings.compile, data_dir=settings.data_dir)
        self.table = ArmTable(self.registry, settings.experiment.arms, context, metrics)
        self.tail = HistoryTail(self.table.catalog, settings.history_len, settings.data_dir, self.table.predictors,
                                max_users=settings.max_users)
        self.event_log: EventLog | None = None
        self.batcher: MicroBatcher[tuple[ArmModel, Query], Recommendation] = MicroBatcher(
            self._run_batch, settings.max_batch, settings.max_wait_ms, on_batch=metrics.batch_size.observe,
            run_in_thread=settings.device != "cpu", max_queue=settings.max_queue)  # inline is cheaper on a CPU
        self._swap_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

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
        """Open the log, load pinned versions (errors abort start-up) and CURRENT (errors are counted
        and retried with the next version), build histories, then start polling."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
            set_search_threads(self.settings.threads)  # FAISS's own OpenMP pool: 2 threads cost 60x CPU per search
        self.event_log = await asyncio.to_thread(open_event_log, self.settings.event_log)
        self.tail.event_log = self.event_log
        self.table.context = dataclasses.replace(self.table.context, event_log=self.event_log)
        self.batcher.start()
        try:
            loaded, current = await self.table.load_initial()
            if loaded:
                await self._install(loaded, current)
            else:
                log.warning("no model in %s yet: not ready until one is published", self.settings.registry)
        except BaseException:
            await self.stop()  # a failed start-up must not leave the log open or the batcher running
            raise
        self._tasks = [asyncio.create_task(self._every(self.refresh, "model_load"), name="registry-poller"),
                       asyncio.create_task(self._every(self.tail.catch_up, "event_tail"), name="event-log-tail")]
        # models, catalogs and histories live as long as the process: moved out of the collector's
        # generations, full collections stop walking them, which would pause requests at scale
        gc.collect()
        gc.freeze()

    async def stop(self) -> None:
        """Stop pollers and the batcher, then close the event log."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        await self.batcher.stop()
        if self.event_log is not None:
            await asyncio.to_thread(self.event_log.close)

    @property
    def ready(self) -> bool:
        return self.tail.histories is not None and not self.table.missing()

    def not_ready_reason(self) -> str:
        missing = self.table.missing()
        if missing:
            failed = "; ".join(f"{v}: {e}" for v, e in self.table.failed_versions.items())
            return f"no model yet for arm(s) {missing}" + (f" (failed versions: {failed})" if failed else "")
        return "user histories are loading"

    # -- requests ----------------------------------------------------------------------------
    async def recommend(self, user_id: str, k: int, exclude_seen: bool) -> tuple[Recommendation, str]:
        """The user's recommendation and arm; history is read now, so it reflects every acknowledged event."""
        arm = self.assigner.assign(user_id)
        model = self.table.arms.get(arm.name)
        if model is None or self.tail.histories is None:
            raise NotReadyError(self.not_ready_reason())
        query = Query(user_id, model.translate(self.tail.get(user_id)), k, exclude_seen)
        if query.personal:
            rec = await self.batcher.submit((model, query))
        else:  # popular items: no forward pass, so nothing to wait for or batch
            rec = model.predictor.recommend([query])[0]
        self.metrics.recommendations.labels(arm=arm.name, version=rec.model_version,
                                            fallback=str(rec.fallback).lower()).inc()
        return rec, arm.name

    async def add_events(self, events: Sequence[Event]) -> list[int]:
        """Append durably (the offsets are returned only after the log's ``append`` returned), then apply
        to histories at once so the user's next recommendation already excludes the item."""
        if self.event_log is None:
            raise NotReadyError("event log is not open yet")
        offsets = await asyncio.to_thread(self.event_log.append, list(events))
        self.metrics.events.inc(len(offsets))
        logged = [LoggedEvent(e.user_id, e.item_id, e.timestamp, e.event_type, e.value, offset=o)
                  for e, o in zip(events, offsets)]
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
                await self._install(adders, self.table.current_version)
        return added

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
        """Load and swap in the registry's CURRENT if it changed; True when a swap happened."""
        if not self.table.wants_current():
            return False
        async with self._swap_lock:
            version = await asyncio.to_thread(self.registry.current)
            if version is None or version == self.table.current_version or version in self.table.failed_versions:
                return False
            predictor = await self.table.try_load(version)
            if predictor is None:
                return False
            await self._install({version: predictor}, version)
            self.metrics.swaps.inc()
            log.info("hot-swapped CURRENT to %s", version)
            return True

    async def _install(self, predictors: dict[str, Predictor], current: str | None) -> None:
        """Map the new versions' ids, rebuild histories if they must, then swap the arms in."""
        arms, new_raws = await self.table.build(predictors, current)
        if self.tail.needs_rebuild(new_raws):
            await self.tail.rebuild()
        async with self.tail.lock:
            # a predictor loaded in a worker thread replayed the log up to then; the events since are read
            # here, on the loop and under the lock, so none can slip between this replay and the swap
            if self.event_log is not None:
                for predictor in predictors.values():
                    predictor.replay(self.event_log)
            self.table.swap(arms, current)
        self.metrics.set_versions(self.describe_arms())
        self.metrics.ready.set(1 if self.ready else 0)
        await self.tail.catch_up()

    # -- reporting ---------------------------------------------------------------------------
    def describe_arms(self) -> dict[str, dict[str, Any]]:
        """``{arm: Predictor.describe()}`` for arms with a model."""
        return self.table.describe()

    async def update_gauges(self) -> None:
        """Refresh the scrape-time gauges: freshness and the online trainer's event-log lag."""
        self.metrics.set_versions(self.describe_arms())
        self.metrics.ready.set(1 if self.ready else 0)
        if self.event_log is not None:
            consumer = self.settings.trainer_consumer
            self.metrics.lag.labels(consumer=consumer).set(await asyncio.to_thread(self.event_log.lag, consumer))

    async def _every(self, job: Callable[[], Awaitable[object]], kind: str) -> None:
        """Run ``job`` every poll interval; a failure is logged and counted, and the loop goes on."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await job()
            except Exception:  # noqa: BLE001 - a poller must survive a bad poll (disk hiccup, log outage)
                self.metrics.errors.labels(kind=kind).inc()
                log.exception("%s poll failed", kind)
