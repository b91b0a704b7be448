"""The ``Predictor`` protocol every served version implements, and what all predictors share.

The server treats every arm the same way: queries in, ``Recommendation`` out, ids mapped through
the arm's ``catalog``. A predictor kind (one sequence model, a retrieval -> ranking pipeline, ...) is
one class that satisfies ``Predictor`` plus its entry in ``serving.loading``; nothing dispatches on
predictor classes. Shared here, so they exist once: which queries get the popular-items fallback
(``Query.personal`` and ``route``), the fallback itself (``PopularItems``), the version facts
(``describe_version``) and the chunked event-log replay (``replay_log``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from seekrec.data.vocab import Catalog
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.retrieval.index import IndexConfig
from seekrec.timing import StageObserver

REPLAY_CHUNK = 10_000  # events read from the log per call while replaying it


@dataclass(frozen=True)
class Query:
    """One user's request. ``history``: the user's recent items as this model's item ids, oldest first
    (ids the model does not know are already dropped); the last ``max_len`` feed the model and all of
    them are excluded from the results when ``exclude_seen``. ``times`` (unix seconds) and ``values`` of
    those events, aligned with ``history``: given only to a predictor whose ``needs_context`` (a model
    with event-time / action inputs), None otherwise."""

    user_id: str
    history: tuple[int, ...]
    k: int
    exclude_seen: bool = True
    times: tuple[int, ...] | None = None
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.times is None and self.values is None:
            return  # id-only queries (models without event-time inputs): nothing more to check
        for name in ("times", "values"):
            column = getattr(self, name)
            if column is not None and len(column) != len(self.history):
                raise ValueError(f"Query.{name} has {len(column)} entries but history has {len(self.history)}; "
                                 "give one per history event")

    @property
    def personal(self) -> bool:
        """Whether a model can personalise this query; the others get the popular-items fallback."""
        return bool(self.history)


@dataclass(frozen=True)
class Recommendation:
    """Ranked raw item ids with their scores (model scores, or interaction counts when ``fallback``)."""

    user_id: str
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    model_version: str
    fallback: bool


class ItemsNotAddableError(RuntimeError):
    """``add_items`` on a predictor that cannot add items by their content (it learns them from events)."""


@dataclass(frozen=True)
class LoadContext:
    """What loading any predictor kind may need besides the registry version (from the serve settings)."""

    candidates: int = 200
    index_config: IndexConfig | None = None
    device: str = "cpu"
    compile_encoder: bool = False
    quantize: str = "none"  # "int8": dynamic int8 user encoder (seekrec.models.quantization)
    data_dir: Path | None = None
    event_log: EventLog | None = None
    feature_store: str | None = None  # Redis url of the pipeline feature store replicas share (none: embedded)
    on_stage: StageObserver | None = None  # seconds per request-path stage (the server's stage histograms)
    hot_items: int = 0  # popular items whose attributes a pipeline keeps in memory in front of that Redis store
    on_hot_items: Callable[[str, int], None] | None = None  # told (hit|miss, count) of those lookups (a metric)


@runtime_checkable
class Predictor(Protocol):
    """One loaded registry version, FastAPI-free. ``catalog`` maps raw item ids to the ids the queries
    carry (``1..n_items``); ``recommend`` may run in a worker thread, the rest on the event loop."""

    version: str
    catalog: Catalog

    @property
    def n_items(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """Version facts for ``/version`` and metrics (see ``describe_version``)."""
        ...

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, in query order (``route`` decides which get the fallback)."""
        ...

    def observe(self, events: Sequence[LoggedEvent]) -> None:
        """Every event the server applies, in offset order (for predictors with their own live state)."""
        ...

    def replay(self, event_log: EventLog) -> int:
        """Catch up with the log past what this predictor has seen; returns how many events were read."""
        ...

    def follow_restarted_log(self) -> None:
        """The log's offsets started again at 1: state kept per offset must follow the new log."""
        ...

    def add_items(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Cold start: add items by raw id with their content; returns the ids added (known ones are
        skipped). Raises ``ItemsNotAddableError`` when this kind cannot add items by content."""
        ...


def route(queries: Sequence[Query], rank: Callable[[Sequence[Query]], list[Recommendation]],
          popular: Callable[[Query], Recommendation]) -> list[Recommendation]:
    """Personal queries go to ``rank`` as one batch, the others to ``popular``; results in query order.
    Every predictor answers users it cannot personalise for the same way."""
    results: list[Recommendation | None] = [None if q.personal else popular(q) for q in queries]
    personal = [i for i, q in enumerate(queries) if q.personal]
    if personal:
        for i, rec in zip(personal, rank([queries[i] for i in personal])):
            results[i] = rec
    return [r for r in results if r is not None]


class PopularItems:
    """The fallback: the most-interacted items of ``catalog`` (ids ``1..n_items``) the user has not
    seen; scores are interaction counts, ties go to the lower id."""

    def __init__(self, catalog: Catalog, n_items: int, version: str) -> None:
        self.catalog, self.version = catalog, version
        self._order = np.argsort(-catalog.counts[1 : n_items + 1], kind="stable") + 1  # [N] ids by count

    def __call__(self, query: Query) -> Recommendation:
        seen = set(query.history) if query.exclude_seen else set()
        ids = [int(i) for i in self._order[: query.k + len(seen)] if int(i) not in seen][: query.k]
        return Recommendation(query.user_id, tuple(self.catalog.items.decode(ids)),
                              tuple(float(self.catalog.counts[i]) for i in ids), self.version, True)


def describe_version(version: str, manifest: Mapping[str, Any], n_items: int, index: str,
                     **extra: Any) -> dict[str, Any]:
    """The facts ``/version`` and the metrics show for a version; ``extra``: kind-specific ones. ``offset``: the
    event-log offset an online-trained version was trained through (None for an offline one)."""
    published = manifest.get("extra", {}).get("published_at")
    if isinstance(published, (int, float)) and not isinstance(published, bool):  # the online trainer's unix time
        published = datetime.fromtimestamp(published, timezone.utc).isoformat()
    return {"version": version, "model_name": manifest.get("model_name"), "created": manifest.get("created"),
            "published_at": published, "offset": manifest.get("extra", {}).get("offset"), "n_items": n_items,
            "index": index, **extra}


def replay_log(event_log: EventLog, offset: Callable[[], int], apply: Callable[[list[LoggedEvent]], None]) -> int:
    """Read the log past ``offset()`` in chunks to its end, handing each chunk to ``apply`` (which
    advances the offset); returns how many events were read."""
    read = 0
    while chunk := event_log.read(offset(), REPLAY_CHUNK):
        apply(chunk)
        read += len(chunk)
    return read
