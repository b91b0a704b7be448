"""The online feature store: per-user sequences, per-entity window counts and static attributes.

``FeatureStore`` keeps what ``FeatureSpec.needs`` asks for, updated from the event stream, and
returns the same raw rows ``OfflineRows`` builds offline, so online features are
``spec.transform(store rows)``, the same code as training. Storage is a ``StoreBackend``: in-process
(``EmbeddedBackend``, snapshots to SQLite) or Redis (``RedisBackend``, one round-trip per request).

Ids are raw strings, as events and requests carry them. Rows count only events strictly before
``now``, like offline rows, and equal them exactly when ``now`` is later than every applied event
(serving passes the wall clock). Window counts stay exact for ``now`` equal to the newest event's
time too, but sequences do not: the newest events are then left out while the store kept only the
last L, so it has fewer older ones to show. Events are appended in arrival order, which for a live
stream is time order.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from seekrec.data.schema import InteractionData
from seekrec.features.batch import FeatureBatch
from seekrec.features.history import Events
from seekrec.features.rows import ITEM_ID, SEQ_ITEMS, SEQ_TIMES, SIDES, TIME, Rows, check_side, object_array
from seekrec.features.spec import FeatureSpec

DEFAULT_PREFIX = "seekrec:features"  # Redis key prefix of a feature store

class EventRecord(Protocol):
    """What ``apply`` reads of an event; ``seekrec.online.event_log.Event`` is one (features sit below
    online in the layering, so they name the shape rather than import the class)."""

    user_id: str
    item_id: str
    timestamp: float


@runtime_checkable
class LoggedRecord(Protocol):
    """An event read back from an event log, with its offset (``seekrec.online.event_log.LoggedEvent``)."""

    offset: int


@dataclass(frozen=True)
class StoreLimits:
    """How much behaviour a backend keeps: the last ``sequence_len`` events per user, and event
    times no older than ``horizon_s`` before each entity's latest event (the longest window)."""

    sequence_len: int = 0
    horizon_s: int = 0

    def __post_init__(self) -> None:
        if self.sequence_len < 0 or self.horizon_s < 0:
            raise ValueError(f"sequence_len and horizon_s must be >= 0, got {self.sequence_len}, {self.horizon_s}")

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> StoreLimits:
        return cls(spec.needs("user").sequence_len, max(spec.needs(s).horizon_s for s in SIDES))


@dataclass(frozen=True)
class EntityState:
    """What a backend knows about one user or item at read time (empty for an unknown id)."""

    attributes: dict[str, Any]
    history: tuple[tuple[str, float], ...] = ()  # (raw item id, time), oldest first; users only
    counts: tuple[int, ...] = ()  # events with now - w <= t < now, one per requested window w


class StoreBackend(Protocol):
    """Storage behind ``FeatureStore``; ``tests/features/test_store.py`` runs one suite over every backend."""

    limits: StoreLimits

    def put_attributes(self, side: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Set (replace) the static attributes of these ids; values are JSON-able."""
        ...

    def append(self, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float], offset: int,
               expected: int | None = None) -> bool:
        """Apply events in order (sequences, window times) and record ``offset``, atomically. With
        ``expected``: only while the recorded offset still is ``expected`` (compare-and-set, so that
        writers sharing the store apply each logged event once); False when it was not applied."""
        ...

    def read(self, side: str, ids: Sequence[str], now: Sequence[float], windows_s: Sequence[int],
             history: bool, attributes: bool | Sequence[bool] = True) -> list[EntityState]:
        """State of each id as of its ``now``; one round-trip for a remote backend. ``attributes``: whether to
        read the attributes (all ids, or one flag per id); the state of an id read without them has none."""
        ...

    def offset(self) -> int:
        """The last event-log offset applied (0: none)."""
        ...

    def close(self) -> None:
        ...


class FeatureStore:
    """Online lookups of user and item features by raw id, kept current by ``apply(events)``."""

    def __init__(self, spec: FeatureSpec, backend: StoreBackend) -> None:
        needed = StoreLimits.from_spec(spec)
        if backend.limits.sequence_len < needed.sequence_len or backend.limits.horizon_s < needed.horizon_s:
            raise ValueError(f"the backend keeps {backend.limits} but the spec needs {needed}; "
                             "create the backend with StoreLimits.from_spec(spec)")
        self.spec = spec
        self.backend = backend

    @classmethod
    def embedded(cls, spec: FeatureSpec) -> FeatureStore:
        """An in-process store (restore a snapshot with ``restore``)."""
        from seekrec.features.store_embedded import EmbeddedBackend

        return cls(spec, EmbeddedBackend(StoreLimits.from_spec(spec)))

    @classmethod
    def restore(cls, spec: FeatureSpec, path: str | Path) -> FeatureStore:
        """An in-process store from a snapshot that ``snapshot`` wrote."""
        from seekrec.features.store_embedded import EmbeddedBackend

        return cls(spec, EmbeddedBackend.restore(path, StoreLimits.from_spec(spec)))

    @classmethod
    def redis(cls, spec: FeatureSpec, url: str, prefix: str = DEFAULT_PREFIX) -> FeatureStore:
        """A store in Redis at ``url`` under keys ``{prefix}:...`` (shared by every server worker)."""
        from seekrec.features.store_redis import RedisBackend

        return cls(spec, RedisBackend(url, prefix, StoreLimits.from_spec(spec)))

    @classmethod
    def shared(cls, spec: FeatureSpec, url: str) -> FeatureStore:
        """The Redis store that every server replica serving ``spec`` shares. ``url``:
        ``redis://host:port/db`` with an optional ``?prefix=KEY`` (default ``seekrec:features``); keys go
        under ``{prefix}:{spec version}`` (a store built for one spec cannot feed another), so versions
        of one spec find the store warm. Fill it with ``bootstrap_once``."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for key, value in query if key == "prefix"]
        if len(prefixes) > 1 or (prefixes and not prefixes[0]):
            raise ValueError(f"feature store url {url!r}: give ?prefix= at most once, and not empty")
        client_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        return cls.redis(spec, client_url, f"{prefixes[0] if prefixes else DEFAULT_PREFIX}:{spec.version[:16]}")

    def bootstrap_once(self, data: InteractionData | None, wait_s: float = 600.0) -> bool:
        """Load ``data``'s attributes and events into a shared store exactly once, whichever replica gets
        here first; the others wait until it is done. True when this process loaded it."""
        from seekrec.features.store_redis import RedisBackend

        if not isinstance(self.backend, RedisBackend):
            raise TypeError(f"bootstrap_once is for stores that processes share; {type(self.backend).__name__} "
                            "is private: call load_static and replay")

        def load() -> None:
            if data is not None:
                self.load_static(data)
                self.replay(data)

        return self.backend.run_once("bootstrap", load, wait_s)

    def snapshot(self, path: str | Path) -> None:
        """Write the embedded store's whole state to a SQLite file, atomically."""
        from seekrec.features.store_embedded import EmbeddedBackend

        if not isinstance(self.backend, EmbeddedBackend):
            raise TypeError(f"snapshots are for the embedded backend; {type(self.backend).__name__} persists itself")
        self.backend.snapshot(path)

    def load_static(self, data: InteractionData) -> None:
        """Load the attributes the spec reads from ``data``'s user and item tables (raw ids as keys)."""
        for side, table, idmap in (("user", data.users, data.user_ids), ("item", data.items, data.item_ids)):
            sources = self.spec.needs(side).attributes
            missing = [s for s in sources if s not in table.column_names]
            if missing:
                raise KeyError(f"the {side} table of {data.source!r} lacks columns {missing} that the spec reads")
            raw = [str(r) for r in idmap.decode(table.column(f"{side}_id").to_numpy()).tolist()]
            values = [table.column(s).to_pylist() for s in sources]
            self.put_attributes(side, {key: {s: v[i] for s, v in zip(sources, values)} for i, key in enumerate(raw)})

    def put_attributes(self, side: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Add or replace static attributes, e.g. a new item's title and genres (cold start)."""
        check_side(side)
        self.backend.put_attributes(side, {str(k): _json_record(side, str(k), r) for k, r in records.items()})

    def apply(self, events: Iterable[EventRecord]) -> int:
        """Apply a batch of events in order; returns how many were applied.

        Logged events (with an ``offset``) at or below the store's offset were applied before and are skipped, so
        replaying a log tail after a restart never counts an event twice.
        """
        batch = list(events)
        while True:
            start = self.backend.offset()
            offset, fresh = start, []
            for event in batch:
                if isinstance(event, LoggedRecord):
                    if event.offset <= start:
                        continue
                    offset = max(offset, event.offset)
                fresh.append(event)
            if not fresh and offset == start:
                return 0
            if self.backend.append([e.user_id for e in fresh], [e.item_id for e in fresh],
                                   [e.timestamp for e in fresh], offset, expected=start):
                return len(fresh)
            # another writer sharing this store (a server replica) moved the offset meanwhile: what it
            # applied is skipped on the next pass, so every logged event counts once

    def replay(self, data: InteractionData, events: Events | None = None, batch_size: int = 20_000) -> int:
        """Bootstrap behaviour from a dataset's events (default: all of them), in time order."""
        events = (Events.from_data(data) if events is None else events).time_order()
        users = [str(u) for u in data.user_ids.decode(events.users).tolist()]
        items = [str(i) for i in data.item_ids.decode(events.items).tolist()]
        times = events.timestamps.astype(np.float64).tolist()
        offset = self.backend.offset()
        for lo in range(0, len(events), batch_size):
            self.backend.append(users[lo:lo + batch_size], items[lo:lo + batch_size], times[lo:lo + batch_size],
                                offset)
        return len(events)

    def rows(self, side: str, ids: Sequence[object], now: float | Sequence[float] | None = None) -> Rows:
        """Raw rows of ``ids`` as of ``now`` (a time or one per id; default: the wall clock)."""
        check_side(side)
        keys = [str(i) for i in ids]
        b = len(keys)
        times = np.broadcast_to(np.asarray(time.time() if now is None else now, dtype=np.float64), (b,)).copy()
        needs = self.spec.needs(side)
        windows = needs.all_windows
        states = self.backend.read(side, keys, times.tolist(), windows, history=needs.sequence_len > 0)
        rows: Rows = {TIME: times}
        if side == "item":
            rows[ITEM_ID] = self.spec.item_index(keys)
        for source in needs.attributes:
            rows[source] = object_array(s.attributes.get(source) for s in states)
        if needs.sequence_len:
            rows[SEQ_ITEMS], rows[SEQ_TIMES] = self._sequences(states, times, needs.sequence_len)
        counts = np.array([s.counts for s in states], dtype=np.int64).reshape(b, len(windows))
        for name, column_windows in needs.windows:
            rows[name] = counts[:, [windows.index(w) for w in column_windows]]
        return rows

    def user_rows(self, user_ids: Sequence[object], now: float | Sequence[float] | None = None) -> Rows:
        return self.rows("user", user_ids, now)

    def item_rows(self, item_ids: Sequence[object], now: float | Sequence[float] | None = None) -> Rows:
        return self.rows("item", item_ids, now)

    def user_features(self, user_ids: Sequence[object], now: float | Sequence[float] | None = None) -> FeatureBatch:
        return self.spec.transform("user", self.user_rows(user_ids, now))

    def item_features(self, item_ids: Sequence[object], now: float | Sequence[float] | None = None) -> FeatureBatch:
        return self.spec.transform("item", self.item_rows(item_ids, now))

    def offset(self) -> int:
        return self.backend.offset()

    def follow_restarted_log(self, log_end: Callable[[], int] | None = None) -> None:
        """The event log started again at offset 1 (reset, or Redis restarted without its data): keep every
        feature learned so far and apply the new log from its start, which would otherwise be skipped as
        already applied.

        ``log_end`` (the new log's last offset), for a store that several servers share: each of them sees
        the reset, but only the first may rewind the store, or events applied since would count again. So
        it rewinds only while the store is still past the new log's end (its offset read first, the
        end after: the end only grows), by compare-and-set."""
        if log_end is None:
            self.backend.append([], [], [], 0)
            return
        start = self.backend.offset()
        if start > log_end():
            self.backend.append([], [], [], 0, expected=start)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _sequences(self, states: list[EntityState], now: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``[B, L]`` spec item ids and times of each user's last events before ``now``, left-padded."""
        items = np.zeros((len(states), length), dtype=np.int64)
        times = np.zeros((len(states), length), dtype=np.float64)
        for row, state in enumerate(states):
            recent = [(item, t) for item, t in state.history if t < now[row]][-length:]
            if recent:
                items[row, length - len(recent):] = self.spec.item_index([item for item, _ in recent])
                times[row, length - len(recent):] = [t for _, t in recent]
        return items, times


def _json_record(side: str, key: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes as plain JSON values (NaN -> None, numpy scalars -> Python); errors name the field."""
    out = {}
    for name, value in record.items():
        clean = _json_value(value)
        try:
            json.dumps(clean, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{side} {key!r} attribute {name!r} = {value!r} is not JSON-able ({exc})") from exc
        out[str(name)] = clean
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
