"""``ServingState``: everything a running server holds, with no FastAPI inside.

Threading model. Everything that mutates shared state (histories, the server's item catalog, the arm
table) runs on the event loop thread; slow work (loading and checksumming a model, building its
index, reading the event log, forward passes) runs in worker threads on immutable inputs. A hot swap
is one assignment of a new arm table, so a request sees the old model or the new one, never a mix.

Item ids. Histories hold ids of the server's own catalog, which grows (append-only) with the raw ids
of every model version loaded; each arm carries a map from those ids to its model's ids, so versions
trained on differently ordered catalogs can be served side by side. Events for items no loaded
version knows are skipped (no model could score them); when a new version (e.g. from the online
trainer) brings such items, histories are rebuilt off the loop so those clicks count from then on.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seekrec.data.vocab import Catalog, Vocab
from seekrec.online.event_log import Event, EventLog, LoggedEvent
from seekrec.online.factory import open_event_log
from seekrec.online.histories import UserHistories
from seekrec.registry import ModelRegistry
from seekrec.retrieval.index import IndexConfig, set_search_threads
from seekrec.serving.batching import MicroBatcher
from seekrec.serving.experiments import ArmAssigner
from seekrec.serving.metrics import ServingMetrics
from seekrec.serving.pipeline_predictor import PIPELINE_KIND, PipelinePredictor, bundle_kind
from seekrec.serving.predictor import Predictor, Query, Recommendation
from seekrec.serving.settings import CURRENT, ServeSettings

log = logging.getLogger(__name__)

REPLAY_CHUNK = 10_000


AnyPredictor = Predictor | PipelinePredictor  # one sequence model, or a retrieval -> ranking pipeline bundle


class NotReadyError(RuntimeError):
    """No model (or no histories) yet for this request; the HTTP layer answers 503."""


class NoPipelineError(RuntimeError):
    """A request only a pipeline arm can serve (adding items by content); the HTTP layer answers 409."""


@dataclass(frozen=True, eq=False)
class ArmModel:
    """A predictor and the map ``server item id -> model item id`` (0: the model does not know it)."""

    predictor: AnyPredictor
    to_model: np.ndarray  # [M + 1]

    def translate(self, items: Sequence[int]) -> tuple[int, ...]:
        """Server ids -> this model's ids, dropping items it does not know (ids added after it loaded too)."""
        size = len(self.to_model)
        return tuple(m for m in (int(self.to_model[i]) if i < size else 0 for i in items) if m > 0)


class ServingState:
    """Models per arm, user histories, the event log, the micro-batcher and the background pollers."""

    def __init__(self, settings: ServeSettings, metrics: ServingMetrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.registry = ModelRegistry(settings.registry)
        self.assigner = ArmAssigner(settings.experiment)
        self.index_config = IndexConfig(hnsw_threshold=settings.ann_threshold)
        # server item ids for histories; grows as versions load (its counts are unused: popularity
        # comes from each version's own catalog)
        self.catalog = Catalog(Vocab())
        self._unknown_items: set[str] = set()  # raw ids in applied events that no loaded version knew
        self.histories: UserHistories | None = None
        self.event_log: EventLog | None = None
        self.arms: dict[str, ArmModel] = {}  # replaced whole on every swap, never mutated
        self.current_version: str | None = None
        self.failed_versions: dict[str, str] = {}  # version -> error, so a broken one is not reloaded each poll
        self.batcher: MicroBatcher[tuple[ArmModel, Query], Recommendation] = MicroBatcher(
            self._run_batch, settings.max_batch, settings.max_wait_ms, on_batch=metrics.batch_size.observe,
            run_in_thread=settings.device != "cpu")  # see MicroBatcher: inline is cheaper on a CPU
        self._events_lock = asyncio.Lock()
        self._swap_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the log, load pinned versions (errors abort start-up) and CURRENT (errors are counted
        and retried with the next version), build histories, then start polling."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
            set_search_threads(self.settings.threads)  # FAISS's own OpenMP pool: 2 threads cost 60x CPU per search
        self.event_log = await asyncio.to_thread(open_event_log, self.settings.event_log)
        self.batcher.start()
        try:
            await self._load_initial()
        except BaseException:
            await self.stop()  # a failed start-up must not leave the log open or the batcher running
            raise
        self._tasks = [asyncio.create_task(self._every(self.refresh, "model_load"), name="registry-poller"),
                       asyncio.create_task(self._every(self.catch_up, "event_tail"), name="event-log-tail")]
        # models, catalogs and histories live as long as the process: moved out of the collector's
        # generations, full collections stop walking them, which would pause requests at scale
        gc.collect()
        gc.freeze()

    async def _load_initial(self) -> None:
        """Pinned versions first (must load), then CURRENT (may be absent or broken: the poller retries)."""
        pinned = {a.version for a in self.settings.experiment.arms if a.version != CURRENT}
        loaded = {v: await asyncio.to_thread(self._load, v) for v in sorted(pinned)}
        current = await asyncio.to_thread(self.registry.current)
        if current is not None and self._wants_current():
            predictor = loaded.get(current) or await self._try_load(current)
            if predictor is not None:
                loaded[current] = predictor
        if loaded:
            await self._install(loaded, current if current in loaded else None)
        else:
            log.warning("no model in %s yet: not ready until one is published", self.settings.registry)

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
        return self.histories is not None and all(a.name in self.arms for a in self.settings.experiment.arms)

    def not_ready_reason(self) -> str:
        missing = [a.name for a in self.settings.experiment.arms if a.name not in self.arms]
        if missing:
            failed = "; ".join(f"{v}: {e}" for v, e in self.failed_versions.items())
            return f"no model yet for arm(s) {missing}" + (f" (failed versions: {failed})" if failed else "")
        return "user histories are loading"

    # -- requests ----------------------------------------------------------------------------
    async def recommend(self, user_id: str, k: int, exclude_seen: bool) -> tuple[Recommendation, str]:
        """The user's recommendation and arm; history is read now, so it reflects every acknowledged event."""
        arm = self.assigner.assign(user_id)
        model = self.arms.get(arm.name)
        if model is None or self.histories is None:
            raise NotReadyError(self.not_ready_reason())
        query = Query(user_id, model.translate(self.histories.get(user_id)), k, exclude_seen)
        if query.history:
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
        await self.catch_up(logged)
        return offsets

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

    # -- event log -> histories --------------------------------------------------------------
    async def catch_up(self, own: Sequence[LoggedEvent] = ()) -> None:
        """Apply every logged event not yet in the histories, in offset order.

        ``own``: a batch this process just appended; applied directly when nothing precedes it,
        otherwise the gap (events of concurrent requests or other processes) is read from the log.
        """
        if self.histories is None or self.event_log is None:
            return  # the start-up replay will read these events
        async with self._events_lock:
            histories, log_ = self.histories, self.event_log
            if own and own[0].offset == histories.offset + 1:
                _apply(histories, own, self.catalog, self._unknown_items)
                self._observe(own)
                return
            end = own[-1].offset if own else await asyncio.to_thread(log_.end_offset)
            while histories.offset < end:
                chunk = await asyncio.to_thread(log_.read, histories.offset, REPLAY_CHUNK)
                if not chunk:
                    break
                _apply(histories, chunk, self.catalog, self._unknown_items)
                self._observe(chunk)

    def _observe(self, events: Sequence[LoggedEvent]) -> None:
        """Pipeline arms keep their own feature store (sequences with times, window counts): feed it."""
        for predictor in self._pipelines():
            predictor.observe(events)

    def _pipelines(self) -> list[PipelinePredictor]:
        unique = {id(m.predictor): m.predictor for m in self.arms.values() if isinstance(m.predictor, PipelinePredictor)}
        return list(unique.values())

    async def add_items(self, records: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
        """Cold start: new items (raw id -> title, genres, ...) join every pipeline arm's catalog, embedded
        from their content; returns ``{version: raw ids added}``. Sequence-model arms learn new items from
        their first events instead (the online trainer grows their item table)."""
        async with self._swap_lock:
            pipelines = self._pipelines()
            if not pipelines:
                raise NoPipelineError("no arm serves a pipeline bundle; sequence models learn new items from "
                                      "their first events (seekrec stream-train)")
            added = {p.version: await asyncio.to_thread(p.add_items, records) for p in pipelines}
            if any(added.values()):
                await self._install({p.version: p for p in pipelines}, self.current_version)
        return added

    def _build_histories(self) -> tuple[UserHistories, set[str]]:
        """Worker thread: histories of the dataset (if any), then the event log replayed to its end;
        also the raw ids of skipped unknown items. Counts go to a private copy: the loop thread may be
        applying events to the live catalog meanwhile."""
        assert self.event_log is not None  # opened first in start()
        catalog, unknown = Catalog(self.catalog.items, self.catalog.counts.copy()), set()
        if self.settings.data_dir is not None:
            histories = UserHistories.from_dataset(self.settings.data_dir, self.settings.history_len, catalog)
        else:
            histories = UserHistories(self.settings.history_len)
        while chunk := self.event_log.read(histories.offset, REPLAY_CHUNK):
            _apply(histories, chunk, catalog, unknown)
        log.info("histories of %d users, event log replayed to offset %d", len(histories), histories.offset)
        return histories, unknown

    # -- models ------------------------------------------------------------------------------
    def _wants_current(self) -> bool:
        return any(a.version == CURRENT for a in self.settings.experiment.arms)

    def _load(self, version: str) -> AnyPredictor:
        if bundle_kind(self.registry, version) == PIPELINE_KIND:
            return PipelinePredictor.from_registry(self.registry, version, data_dir=self.settings.data_dir,
                                                   event_log=self.event_log)
        return Predictor.from_registry(self.registry, version, candidates=self.settings.candidates,
                                       index_config=self.index_config, device=self.settings.device,
                                       compile_encoder=self.settings.compile)

    async def _try_load(self, version: str) -> AnyPredictor | None:
        """Load off the loop; a bad version (checksum, missing catalog, unbuildable model) is counted
        and remembered so that polling does not re-hash it every interval."""
        try:
            return await asyncio.to_thread(self._load, version)
        except Exception as exc:  # noqa: BLE001 - any failure to load must leave the old model serving
            self.failed_versions[version] = str(exc)
            self.metrics.errors.labels(kind="model_load").inc()
            log.error("cannot load %s, still serving %s: %s", version, self.current_version, exc)
            return None

    async def refresh(self) -> bool:
        """Load and swap in the registry's CURRENT if it changed; True when a swap happened."""
        if not self._wants_current():
            return False
        async with self._swap_lock:
            version = await asyncio.to_thread(self.registry.current)
            if version is None or version == self.current_version or version in self.failed_versions:
                return False
            predictor = await self._try_load(version)
            if predictor is None:
                return False
            await self._install({version: predictor}, version)
            self.metrics.swaps.inc()
            log.info("hot-swapped CURRENT to %s", version)
            return True

    async def _install(self, predictors: dict[str, AnyPredictor], current: str | None) -> None:
        """Grow the server catalog with the new versions' items, map ids, then swap the arm table."""
        new_raws = await asyncio.to_thread(self._unknown_raws, list(predictors.values()))
        for raw in new_raws:  # on the loop: histories read the catalog here
            self.catalog.add(raw)
        server_raws = await asyncio.to_thread(self.catalog.items.decode, np.arange(1, len(self.catalog.items) + 1))
        built = {v: ArmModel(p, await asyncio.to_thread(_id_map, server_raws, p)) for v, p in predictors.items()}
        arms = dict(self.arms)
        for arm in self.settings.experiment.arms:
            version = current if arm.version == CURRENT else arm.version
            if version in built:
                arms[arm.name] = built[version]
        if self.histories is None or self._unknown_items.intersection(new_raws):
            # first start, or skipped clicks became known: rebuild (events meanwhile go to the old
            # histories and reach the new ones through the catch-up below)
            histories, unknown = await asyncio.to_thread(self._build_histories)
            async with self._events_lock:
                self.histories, self._unknown_items = histories, unknown
        async with self._events_lock:
            # a pipeline loaded in a worker thread replayed the log up to then; the events since are read
            # here, on the loop and under the lock, so none can slip between this replay and the swap
            for predictor in predictors.values():
                if isinstance(predictor, PipelinePredictor) and self.event_log is not None:
                    predictor.replay(self.event_log)
            self.arms = arms  # the swap: one reference assignment
        if current is not None:
            self.current_version = current
        self.metrics.set_versions(self.describe_arms())
        self.metrics.ready.set(1 if self.ready else 0)
        await self.catch_up()

    def _unknown_raws(self, predictors: list[AnyPredictor]) -> list[str]:
        seen: set[str] = set()
        out = []
        for predictor in predictors:
            for raw in predictor.catalog.items.decode(np.arange(1, predictor.n_items + 1)):
                if raw not in self.catalog.items and raw not in seen:
                    seen.add(raw)
                    out.append(raw)
        return out

    # -- reporting ---------------------------------------------------------------------------
    def describe_arms(self) -> dict[str, dict[str, Any]]:
        """``{arm: Predictor.describe()}`` for arms with a model."""
        return {name: model.predictor.describe() for name, model in self.arms.items()}

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


def _apply(histories: UserHistories, events: Sequence[LoggedEvent], catalog: Catalog, unknown: set[str]) -> None:
    """``histories.apply`` without adding items, remembering the raw ids it had to skip."""
    unknown.update(e.item_id for e in events if e.offset > histories.offset and e.item_id not in catalog.items)
    histories.apply(events, catalog, add_items=False)


def _id_map(server_raws: list[str], predictor: AnyPredictor) -> np.ndarray:
    """``[M + 1]`` server id -> model id via raw ids (row 0 stays padding; items past the model's table: 0)."""
    ids = np.concatenate([[0], predictor.catalog.items.encode(server_raws)]).astype(np.int64)
    ids[ids > predictor.n_items] = 0
    return ids
