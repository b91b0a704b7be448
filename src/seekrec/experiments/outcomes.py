"""Served-list logs: what each request showed, to whom, under which arms, written off the request path.

Per-arm metrics need the denominator as much as the clicks: which items each user was shown, by which
arm and model version. ``POST /recommend`` builds one ``ServedList`` per answer and hands it to a
``BackgroundWriter``, whose bounded queue never blocks the request: when the log is slow or down, the
records past the bound are dropped and counted rather than delaying users. Records are JSON (never
pickles), kept in one SQLite file (the default) or in a Redis Stream (``outcome_stores``:
``open_outcome_log(url)`` picks the backend from the same kind of url as the event log).
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from seekrec.online.event_log import EventLogUnavailableError

# the event log's list of SQLite result codes that mean "unavailable right now": one place decides

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "seekrec:served"
DEFAULT_MAXLEN = 1_000_000  # Redis keeps about this many served lists (approximate trimming)
MAX_REQUEST_ID_LEN = 200
# PRAGMA application_id of an outcome-log file ("srol"). The event log reads user_version, which stays
# 0 here: an event log opened on this file sees a foreign table and refuses it, and vice versa.
APPLICATION_ID = 0x73726F6C
SHARED = 2  # added to a position's team in ServedList.teams when both interleaved rankers show the item
QUEUE_FULL = "queue_full"  # ``on_lost`` reasons of BackgroundWriter
WRITE_FAILED = "write_failed"
CLOSED = "closed"
_LogT = TypeVar("_LogT", bound="OutcomeLog")
_RecordT = TypeVar("_RecordT")


def new_request_id() -> str:
    """A fresh request id (32 hex characters of a random UUID4): unique across replicas without coordination."""
    return uuid.uuid4().hex


class OutcomeLogUnavailableError(EventLogUnavailableError):
    """The outcome log's storage cannot be reached or written right now; transient (the writer retries)."""


def _check_text(owner: str, name: str, value: object, max_len: int | None = None) -> None:
    if not isinstance(value, str) or not value or (max_len is not None and len(value) > max_len):
        limit = "" if max_len is None else f" of at most {max_len} characters"
        raise ValueError(f"{owner}.{name} must be a non-empty string{limit}, got {value!r}")
    try:
        value.encode("utf-8")  # both backends store UTF-8; lone surrogates cannot be stored
    except UnicodeEncodeError as exc:
        raise ValueError(f"{owner}.{name} is not valid unicode text: {value!r}") from exc


def _check_number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}.{name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ServedList:
    """One answered ``POST /recommend``: the items shown in order (position = index) and how they came about.

    ``arms`` maps each experiment layer to the user's arm in it; ``teams`` marks, for an interleaved
    list, which ranker contributed each position (0 = A, 1 = B; plus 2 where the item is in both rankers'
    top K, ``SHARED``: its clicks tell the rankers apart less), and is None otherwise. ``items`` and
    ``teams`` are stored as tuples and ``arms`` as a private copy, so a record cannot change after it
    was queued.
    """

    request_id: str
    user_id: str
    time: float  # unix seconds when the list was served
    arms: dict[str, str]
    version: str  # model version that produced the list
    items: tuple[str, ...]
    latency_ms: float
    fallback: bool  # popular items instead of a personal list
    teams: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _check_text("ServedList", "request_id", self.request_id, MAX_REQUEST_ID_LEN)
        _check_text("ServedList", "user_id", self.user_id)
        _check_text("ServedList", "version", self.version)
        object.__setattr__(self, "time", _check_number("ServedList", "time", self.time))
        object.__setattr__(self, "latency_ms", _check_number("ServedList", "latency_ms", self.latency_ms))
        if not isinstance(self.fallback, bool):
            raise ValueError(f"ServedList.fallback must be a bool, got {self.fallback!r}")
        if not isinstance(self.arms, Mapping):
            raise ValueError(f"ServedList.arms must map layer -> arm name, got {self.arms!r}")
        for layer, arm in self.arms.items():
            _check_text("ServedList", f"arms key {layer!r}", layer)
            _check_text("ServedList", f"arms[{layer!r}]", arm)
        object.__setattr__(self, "arms", dict(self.arms))
        if isinstance(self.items, (str, bytes)) or not isinstance(self.items, Sequence):
            raise ValueError(f"ServedList.items must be a sequence of item ids, got {self.items!r}")
        for position, item in enumerate(self.items):
            _check_text("ServedList", f"items[{position}]", item)
        object.__setattr__(self, "items", tuple(self.items))
        if self.teams is not None:
            if isinstance(self.teams, (str, bytes)) or not isinstance(self.teams, Sequence):
                raise ValueError(f"ServedList.teams must be None or a sequence of 0-3, got {self.teams!r}")
            teams = tuple(self.teams)
            if len(teams) != len(self.items) or any(t not in (0, 1, 2, 3) or isinstance(t, bool) for t in teams):
                raise ValueError(f"ServedList.teams must hold one team per item ({len(self.items)} items): 0 or 1, "
                                 f"plus {SHARED} for an item both rankers show; got {list(teams)!r}")
            object.__setattr__(self, "teams", tuple(int(t) for t in teams))

    def arm(self, layer: str) -> str | None:
        """The arm this list was served under in ``layer``; None when the request was not in that layer."""
        return self.arms.get(layer)

    def to_json(self) -> str:
        """Compact JSON; floats round-trip exactly (``json`` writes their ``repr``)."""
        return json.dumps({"request_id": self.request_id, "user_id": self.user_id, "time": self.time,
                           "arms": self.arms, "version": self.version, "items": list(self.items),
                           "latency_ms": self.latency_ms, "fallback": self.fallback,
                           "teams": None if self.teams is None else list(self.teams)},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ServedList:
        """The record ``to_json`` wrote; ``ValueError`` quoting the text when it is not one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a served-list record (invalid JSON: {exc}): {text[:200]!r}") from exc
        if not isinstance(data, dict) or set(data) != _FIELDS:
            raise ValueError(f"not a served-list record (fields must be {sorted(_FIELDS)}): {text[:200]!r}")
        return cls(**data)


_FIELDS = {"request_id", "user_id", "time", "arms", "version", "items", "latency_ms", "fallback", "teams"}


def _check_range(since_time: float | None, until_time: float | None) -> tuple[float, float]:
    """``[since_time, until_time)`` as finite-or-infinite floats; None leaves that end open."""
    lo = -math.inf if since_time is None else since_time
    hi = math.inf if until_time is None else until_time
    for name, value in (("since_time", lo), ("until_time", hi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{name} must be unix seconds or None, got {value!r}")
    if lo > hi:
        raise ValueError(f"since_time {since_time} is after until_time {until_time}")
    return float(lo), float(hi)


def _check_arms(arms: Mapping[str, str] | None) -> dict[str, str]:
    if arms is None:
        return {}
    if not isinstance(arms, Mapping):
        raise ValueError(f"arms must map layer -> arm name (or be None), got {arms!r}")
    for layer, arm in arms.items():
        _check_text("read", f"arms[{layer!r}]", arm)
    return dict(arms)


def _check_records(records: Sequence[ServedList]) -> list[ServedList]:
    batch = list(records)
    for position, record in enumerate(batch):
        if not isinstance(record, ServedList):
            raise TypeError(f"append() takes ServedList objects; item {position} is {type(record).__name__}")
    return batch


def _selected(record: ServedList, lo: float, hi: float, arms: dict[str, str]) -> bool:
    return lo <= record.time < hi and all(record.arms.get(layer) == arm for layer, arm in arms.items())


@runtime_checkable
class OutcomeLog(Protocol):
    """An append-only log of served lists.

    * ``append`` writes a batch (durable when it returns for SQLite; in Redis memory for Redis) and
      returns how many records were new: SQLite ignores a request id it already holds, so retrying a
      batch is harmless; a Redis retry after a timeout may store a record twice, which ``attribute``
      drops (it keeps the first list of each request id).
    * ``read(since_time, until_time, arms)`` yields the lists served in ``[since_time, until_time)``
      (unix seconds, None = open) whose ``arms`` include every ``layer: arm`` pair given, page by page.
    * Transient storage failures raise ``OutcomeLogUnavailableError``.

    Backends subclass this protocol to inherit the context manager.
    """

    def append(self, records: Sequence[ServedList]) -> int:
        """Write a batch; return how many records were new."""
        ...

    def read(self, since_time: float | None = None, until_time: float | None = None,
             arms: Mapping[str, str] | None = None) -> Iterator[ServedList]:
        """Served lists in the time range whose arms match, read lazily in pages."""
        ...

    def close(self) -> None:
        """Release connections; the records stay where they are."""
        ...

    def __enter__(self: _LogT) -> _LogT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -------------------------------------------------------------------------------------------- SQLite


class RecordSink(Protocol[_RecordT]):
    """Where a ``BackgroundWriter`` hands its batches: an ``OutcomeLog``, or any ``append(records)``."""

    def append(self, records: Sequence[_RecordT]) -> Any:
        ...


class BackgroundWriter(Generic[_RecordT]):
    """Writes records (served lists by default) from a daemon thread so that ``POST /recommend`` never waits.

    ``submit`` only puts the record in a bounded queue (``put_nowait``): it returns at once, True when
    queued, False when the queue is full or the writer is closed; such records are dropped and counted
    in ``dropped``. The thread takes what has accumulated (up to ``batch_size``) and appends it in one
    call; a transient storage failure (``OSError``, which includes ``OutcomeLogUnavailableError``) is
    retried ``max_retries`` times with exponential backoff from ``retry_delay_s``; a batch that still
    fails, or fails otherwise, is counted in ``failed`` and the thread carries on. ``on_lost(count,
    reason)`` (reason ``"queue_full"``, ``"closed"`` or ``"write_failed"``) is the hook for a Prometheus
    counter; it runs on the caller's thread for drops and on the writer thread for failures, so it
    must be cheap and must not raise. The writer does not own the log: close the writer, then the log.
    ``record_type`` (default ``ServedList``) is what ``submit`` accepts and ``name`` names the thread and the
    warnings, so other records (the server's request log) reuse the same queue and counters.
    """

    def __init__(self, log: RecordSink[_RecordT], max_queue: int = 10_000, *, batch_size: int = 500,
                 max_retries: int = 3, retry_delay_s: float = 0.5, on_lost: Callable[[int, str], None] | None = None,
                 record_type: type = ServedList, name: str = "outcome-log-writer") -> None:
        for name, value, least in (("max_queue", max_queue, 1), ("batch_size", batch_size, 1),
                                   ("max_retries", max_retries, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if not (retry_delay_s >= 0 and math.isfinite(retry_delay_s)):
            raise ValueError(f"retry_delay_s must be finite seconds >= 0, got {retry_delay_s!r}")
        self.log = log
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self._on_lost = on_lost
        self.record_type, self.name = record_type, name
        self._queue: queue.Queue[_RecordT | None] = queue.Queue(max_queue)  # None: the stop sentinel
        self._cond = threading.Condition()  # guards the counters below; never held during I/O
        self._accepted = self._finished = 0
        self._dropped = self._failed = self._written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Records refused by ``submit`` (queue full, or submitted after ``close``)."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Records accepted but never written (the log kept failing)."""
        return self._failed

    @property
    def written(self) -> int:
        """Records handed to the log successfully."""
        return self._written

    @property
    def pending(self) -> int:
        """Records accepted and not yet written or given up."""
        return self._accepted - self._finished

    def submit(self, record: _RecordT) -> bool:
        """Queue ``record`` without waiting; False (and counted in ``dropped``) when it had to be dropped."""
        if not isinstance(record, self.record_type):
            raise TypeError(f"submit() takes a {self.record_type.__name__}, got {type(record).__name__}")
        reason = None
        with self._cond:
            if self._closed:
                reason = CLOSED
            else:
                try:
                    self._queue.put_nowait(record)
                    self._accepted += 1
                except queue.Full:
                    reason = QUEUE_FULL
            if reason is not None:
                self._dropped += 1
        if reason is None:
            return True
        if self._on_lost is not None:
            self._on_lost(1, reason)
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record accepted so far is written or given up; False if ``timeout`` passed first."""
        with self._cond:
            target = self._accepted
            return self._cond.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, write what is queued and stop the thread; False when it did not finish within
        ``timeout`` seconds (the rest is lost when the process exits). Idempotent."""
        deadline = time.monotonic() + timeout
        with self._cond:
            first = not self._closed
            self._closed = True
        if first:
            try:  # the queue may be full: the sentinel waits for the thread to make room
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                logger.warning("%s: %d records still queued at close", self.name, self.pending)
                return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning("%s: %d records not written at close", self.name, self.pending)
            return False
        return True

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            batch, stop = [record], False
            while len(batch) < self.batch_size:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_RecordT]) -> None:
        ok = False
        for attempt in range(self.max_retries + 1):
            try:
                self.log.append(batch)
                ok = True
                break
            except OSError as exc:  # transient: the log's storage is down or busy
                logger.warning("%s (%r): append of %d records failed (attempt %d of %d): %s",
                               self.name, self.log, len(batch), attempt + 1, self.max_retries + 1, exc)
                if attempt < self.max_retries:
                    time.sleep(self.retry_delay_s * 2**attempt)
            except Exception:  # a bug must not kill the thread and silently stop all logging: count and go on
                logger.exception("%s (%r): append of %d records failed", self.name, self.log, len(batch))
                break
        with self._cond:
            if ok:
                self._written += len(batch)
            else:
                self._failed += len(batch)
            self._finished += len(batch)
            self._cond.notify_all()
        if not ok and self._on_lost is not None:
            self._on_lost(len(batch), WRITE_FAILED)

    def __enter__(self) -> BackgroundWriter[_RecordT]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
