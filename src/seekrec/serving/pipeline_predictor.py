"""``PipelinePredictor``: a registry pipeline bundle (two-tower -> DIN -> re-rank) as a ``Predictor``.

A pipeline needs more than the item history the server keeps: user attributes,
the behaviour sequence with times, and window counts of users and candidate items. Those come from
an embedded ``FeatureStore`` that this predictor owns, loaded from the dataset's tables and events,
then fed every logged event (``observe``); the store skips events at or below its offset, so
replaying a log tail twice counts nothing twice. Replicas may share one Redis store instead
(``feature_store``): the first to load fills it, and every replica feeds it the logged events, which
its compare-and-set offset applies once. Items added through ``add_items`` (a title and
genres, no interactions) are embedded from their content and retrievable at once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.data.schema import InteractionData
from seekrec.data.vocab import Catalog, Vocab
from seekrec.features.store import FeatureStore
from seekrec.features.store_hot import HotItemAttributes
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.pipeline.artifacts import PIPELINE_KIND, load_bundle
from seekrec.pipeline.features import new_item_features
from seekrec.pipeline.pipeline import Pipeline
from seekrec.registry import LoadedBundle, ModelRegistry, RegistryError
from seekrec.serving.predictor import (
    LoadContext,
    PopularItems,
    Query,
    Recommendation,
    describe_version,
    replay_log,
    route,
)
from seekrec.timing import StageObserver

log = logging.getLogger(__name__)


class PipelinePredictor:
    """One pipeline version with its own feature store; thread-safe (one lock around store and catalog)."""

    kind = PIPELINE_KIND

    def __init__(self, bundle: LoadedBundle, pipeline: Pipeline, store: FeatureStore, counts: np.ndarray, *,
                 shared_log: EventLog | None = None) -> None:
        self.version, self.manifest, self.pipeline, self.store = bundle.version, bundle.manifest, pipeline, store
        self._counts = np.asarray(counts, dtype=np.int64)  # [N + 1] training interactions per item, for the fallback
        self._shared_log = shared_log  # the log, when other replicas share ``store`` (see follow_restarted_log)
        self._lock = threading.Lock()
        self.on_stage: StageObserver | None = None  # seconds of search, rank and rerank per batch
        # DIN's scores are calibrated click probabilities (the server watches their bias); an LLM's sigmoid is not
        self.calibrated = pipeline.stages.reranker == "din"
        self._refresh_catalog()

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None, *, data_dir: Path | None,
                      event_log: EventLog | None = None, feature_store: str | None = None, hot_items: int = 0,
                      on_hot_items: Callable[[str, int], None] | None = None) -> PipelinePredictor:
        """Load (and checksum) a pipeline bundle, fill its store from ``data_dir`` and the log, smoke-test it.
        ``feature_store``: the Redis url of a store shared with other replicas (filled once, by the first);
        ``hot_items``: with it, the attributes of that many most popular items are kept in memory
        (``HotItemAttributes``; ``on_hot_items`` counts its hits and misses)."""
        bundle = registry.load_bundle(version)
        if bundle.kind != PIPELINE_KIND:
            raise RegistryError(f"{bundle.version} is a {bundle.kind}, not a pipeline bundle")
        pipeline = load_bundle(bundle.directory)
        counts = np.zeros(pipeline.n_items + 1, dtype=np.int64)  # items added to the bundle after training too
        data = InteractionData.read(data_dir) if data_dir is not None else None
        if data is not None:
            items = pipeline.spec.item_index([str(r) for r in data.item_ids.raw.tolist()])  # dataset id -> spec id
            counts = np.bincount(items[data.interactions()[1] - 1], minlength=len(counts))[: len(counts)]
        if feature_store is None:
            store = FeatureStore.embedded(pipeline.spec)
            if data is not None:
                store.load_static(data)
                store.replay(data)
        else:
            store = FeatureStore.shared(pipeline.spec, feature_store)
            filled = store.bootstrap_once(data)
            log.info("%s: shared feature store %s (%s)", bundle.version, pipeline.spec.version[:16],
                     "filled by this replica" if filled else "already filled")
            if hot_items and counts.any():  # the candidates' attributes are read per request; the popular ones stay here
                hot = pipeline.raw_item_ids(np.argsort(-counts[1:], kind="stable")[:hot_items] + 1)
                store = FeatureStore(pipeline.spec, HotItemAttributes(store.backend, hot, on_hot_items))
        predictor = cls(bundle, pipeline, store, counts, shared_log=event_log if feature_store is not None else None)
        if event_log is not None:
            predictor.replay(event_log)
        predictor.check()
        log.info("loaded pipeline %s: %d items, feature spec %s", bundle.version, pipeline.n_items,
                 pipeline.spec.version[:12])
        return predictor

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, context: LoadContext) -> PipelinePredictor:
        """``from_registry`` with the server's load settings (see ``serving.loading``)."""
        predictor = cls.from_registry(registry, version, data_dir=context.data_dir, event_log=context.event_log,
                                      feature_store=context.feature_store, hot_items=context.hot_items,
                                      on_hot_items=context.on_hot_items)
        predictor.on_stage = context.on_stage  # after the self-check, which is not a request
        return predictor

    # -- the Predictor surface the server uses ---------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.pipeline.n_items

    def describe(self) -> dict[str, Any]:
        """Version facts for ``/version`` and metrics, with the feature spec the bundle reads."""
        return describe_version(self.version, self.manifest, self.n_items,
                                f"pipeline ({self.pipeline.stages.retriever} -> din)",
                                feature_spec=self.pipeline.spec.version)

    def check(self) -> None:
        """One request through every stage must give finite scores, as ``Predictor.check`` demands."""
        rec = self.recommend([Query("self-check", (1,), min(10, self.n_items), exclude_seen=False)])[0]
        if not rec.item_ids or not all(map(math.isfinite, rec.scores)):
            raise RegistryError(f"{self.version}: the pipeline produces no finite scores; it will not be served")

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, in order; users with no usable history get the most popular items (fallback)."""
        return route(queries, self._rank, self._popular)

    def _rank(self, batch: Sequence[Query]) -> list[Recommendation]:
        """User rows from the store as of now -> retrieve -> DIN -> re-rank, one pass for the batch."""
        now = time.time()
        with self._lock:
            user = self.store.user_features([q.user_id for q in batch], now)
            recs = self.pipeline.recommend(user, [q.history if q.exclude_seen else () for q in batch],
                                           k=max(q.k for q in batch),
                                           item_features=self.pipeline.store_item_features(self.store, now),
                                           on_stage=self.on_stage)
            out = []
            for row, query in enumerate(batch):
                ids, scores = recs.row(row)
                ids, scores = ids[: query.k], scores[: query.k]
                out.append(Recommendation(query.user_id, tuple(self.pipeline.raw_item_ids(ids)),
                                          tuple(float(s) for s in scores), self.version, False))
        return out

    # -- live updates ----------------------------------------------------------------------------------------
    def observe(self, events: Sequence[LoggedEvent]) -> None:
        """Apply logged events to the store (behaviour sequences, window counts); repeats are skipped."""
        with self._lock:
            self.store.apply(events)

    def replay(self, event_log: EventLog) -> int:
        """Apply every logged event past the store's offset; returns how many were read."""
        return replay_log(event_log, self.store.offset, self.observe)

    def follow_restarted_log(self) -> None:
        """The feature store keeps its sequences and counts and applies the new log from offset 1 (a
        shared store: only the first replica to see the reset rewinds it)."""
        with self._lock:
            self.store.follow_restarted_log(None if self._shared_log is None else self._shared_log.end_offset)

    def add_items(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Cold start: add items by raw id with their attributes (title, genres, ...); returns the ids added
        (ones already known are skipped). They are embedded from that content and retrievable at once."""
        with self._lock:
            raws = [str(k) for k in records]
            fresh = {raw: records[key] for raw, key, known in zip(raws, records, self.pipeline.item_ids(raws)) if not known}
            if fresh:
                self.store.put_attributes("item", fresh)
                self.pipeline.add_items(list(fresh), new_item_features(self.pipeline.spec, list(fresh.values()),
                                                                       time.time()))
                self._counts = np.concatenate([self._counts, np.zeros(len(fresh), dtype=np.int64)])
                self._refresh_catalog()
        return list(fresh)

    def _refresh_catalog(self) -> None:
        """Raw ids of ``1..N'`` for the server's id mapping (the server reads ``catalog`` and ``n_items``)."""
        raws = self.pipeline.raw_item_ids(np.arange(1, self.pipeline.n_items + 1))
        self.catalog = Catalog(Vocab(raws), self._counts)
        self._popular = PopularItems(self.catalog, self.pipeline.n_items, self.version)
