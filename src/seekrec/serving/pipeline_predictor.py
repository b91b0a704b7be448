"""``PipelinePredictor``: a registry pipeline bundle (two-tower -> DIN -> re-rank) served like ``Predictor``.

The server treats every arm the same way: queries in, ``Recommendation`` out, ids mapped through the
arm's ``catalog``. A pipeline needs more than the item history the server keeps: user attributes,
the behaviour sequence with times, and window counts of users and candidate items. Those come from
an embedded ``FeatureStore`` that this predictor owns, loaded from the dataset's tables and events,
then fed every logged event (``observe``); the store skips events at or below its offset, so
replaying a log tail twice counts nothing twice. Items added through ``add_items`` (a title and
genres, no interactions) are embedded from their content and retrievable at once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.data.schema import InteractionData
from seekrec.data.vocab import Catalog, Vocab
from seekrec.features.store import FeatureStore
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.pipeline.artifacts import PIPELINE_FILE, load_bundle
from seekrec.pipeline.features import new_item_features
from seekrec.pipeline.pipeline import Pipeline
from seekrec.registry import LoadedBundle, ModelRegistry, RegistryError
from seekrec.serving.predictor import Query, Recommendation, route

log = logging.getLogger(__name__)

PIPELINE_KIND = "pipeline"
REPLAY_CHUNK = 10_000


class PipelinePredictor:
    """One pipeline version with its own feature store; thread-safe (one lock around store and catalog)."""

    def __init__(self, bundle: LoadedBundle, pipeline: Pipeline, store: FeatureStore, counts: np.ndarray) -> None:
        self.version, self.manifest, self.pipeline, self.store = bundle.version, bundle.manifest, pipeline, store
        self._counts = np.asarray(counts, dtype=np.int64)  # [N + 1] training interactions per item, for the fallback
        self._lock = threading.Lock()
        self._refresh_catalog()

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None, *, data_dir: Path | None,
                      event_log: EventLog | None = None) -> PipelinePredictor:
        """Load (and checksum) a pipeline bundle, fill its store from ``data_dir`` and the log, smoke-test it."""
        bundle = registry.load_bundle(version)
        if bundle.kind != PIPELINE_KIND:
            raise RegistryError(f"{bundle.version} is a {bundle.kind}, not a pipeline bundle")
        pipeline = load_bundle(bundle.directory)
        store = FeatureStore.embedded(pipeline.spec)
        counts = np.zeros(pipeline.spec.n_items + 1, dtype=np.int64)
        if data_dir is not None:
            data = InteractionData.read(data_dir)
            store.load_static(data)
            store.replay(data)
            items = pipeline.spec.item_index([str(r) for r in data.item_ids.raw.tolist()])  # dataset id -> spec id
            counts = np.bincount(items[data.interactions()[1] - 1], minlength=len(counts))[: len(counts)]
        predictor = cls(bundle, pipeline, store, counts)
        if event_log is not None:
            predictor.replay(event_log)
        predictor.check()
        log.info("loaded pipeline %s: %d items, feature spec %s", bundle.version, pipeline.n_items,
                 pipeline.spec.version[:12])
        return predictor

    # -- the Predictor surface the server uses ---------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.pipeline.n_items

    def describe(self) -> dict[str, Any]:
        published = self.manifest.get("extra", {}).get("published_at")
        if isinstance(published, (int, float)) and not isinstance(published, bool):
            published = datetime.fromtimestamp(published, timezone.utc).isoformat()
        return {"version": self.version, "model_name": self.manifest.get("model_name"),
                "created": self.manifest.get("created"), "published_at": published, "n_items": self.n_items,
                "index": f"pipeline ({self.pipeline.stages.retriever} -> din)",
                "feature_spec": self.pipeline.spec.version}

    def check(self) -> None:
        """One request through every stage must give finite scores, as ``Predictor.check`` demands."""
        rec = self.recommend([Query("self-check", (1,), min(10, self.n_items), exclude_seen=False)])[0]
        if not rec.item_ids or not all(map(math.isfinite, rec.scores)):
            raise RegistryError(f"{self.version}: the pipeline produces no finite scores; it will not be served")

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, in order; users with no usable history get the most popular items (fallback)."""
        return route(queries, self._rank, self._popular_for)

    def _rank(self, batch: Sequence[Query]) -> list[Recommendation]:
        """User rows from the store as of now -> retrieve -> DIN -> re-rank, one pass for the batch."""
        now = time.time()
        with self._lock:
            user = self.store.user_features([q.user_id for q in batch], now)
            recs = self.pipeline.recommend(user, [q.history if q.exclude_seen else () for q in batch],
                                           k=max(q.k for q in batch),
                                           item_features=self.pipeline.store_item_features(self.store, now))
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
        read = 0
        while True:
            chunk = event_log.read(self.store.offset(), REPLAY_CHUNK)
            if not chunk:
                return read
            self.observe(chunk)
            read += len(chunk)

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
        self._popular = np.argsort(-self._counts[1:], kind="stable") + 1

    def _popular_for(self, query: Query) -> Recommendation:
        seen = set(query.history) if query.exclude_seen else set()
        ids = [int(i) for i in self._popular[: query.k + len(seen)] if int(i) not in seen][: query.k]
        return Recommendation(query.user_id, tuple(self.pipeline.raw_item_ids(ids)) if ids else (),
                              tuple(float(self._counts[i]) for i in ids), self.version, True)


def publish_pipeline(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    """Publish a pipeline bundle, or the bundle of a ``seekrec pipeline train`` run directory (whose
    results.json supplies the metrics); the manifest records the feature spec version."""
    root = Path(path)
    run_results = root / "results.json"
    bundle = root / "bundle" if (root / "bundle" / PIPELINE_FILE).is_file() else root
    if not (bundle / PIPELINE_FILE).is_file():
        raise RegistryError(f"{root}: neither a pipeline bundle nor a pipeline run directory (no {PIPELINE_FILE}); "
                            "write one with `seekrec pipeline train`")
    meta = json.loads((bundle / PIPELINE_FILE).read_text(encoding="utf-8"))
    metrics: dict[str, Any] = {}
    if bundle != root and run_results.is_file():
        results = json.loads(run_results.read_text(encoding="utf-8"))
        for stage in ("two_tower", "din"):
            for key, value in (results.get(stage, {}).get("valid") or {}).items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    metrics[f"{stage}/valid/{key}"] = value
    name = f"pipeline({meta.get('stages', {}).get('retriever', 'two_tower')}->din)"
    return registry.publish_bundle(bundle, kind=PIPELINE_KIND, name=name, metrics=metrics, promote=promote,
                                   data_spec={"feature_spec_version": meta["spec_version"], "n_items": meta["n_items"]})


def bundle_kind(registry: ModelRegistry, version: str) -> str:
    """``model`` or a bundle kind, from the version's manifest (no checksum work)."""
    return str(registry.manifest(version).get("kind", "model"))


__all__ = ["PIPELINE_KIND", "PipelinePredictor", "bundle_kind", "publish_pipeline"]
