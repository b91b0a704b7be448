"""Interaction events and the ``EventLog`` contract that every log backend honours.

The serving process appends feedback events and must never lose one it has acknowledged; the online
trainer tails the log from its committed position and stores that position inside its checkpoint, so
training resumes exactly where the saved model stopped. Offsets are plain integers (1, 2, 3, ...)
rather than backend-specific ids so that a checkpoint does not depend on which backend wrote it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, TypeVar, runtime_checkable

_LogT = TypeVar("_LogT", bound="EventLog")
TRAINER_CONSUMER = "online-trainer"  # the online trainer's consumer name: keys its committed position
IDEMPOTENCY_WINDOW_S = 3600.0  # how long a batch's idempotency key is remembered (a client's retry horizon)
MAX_IDEMPOTENCY_KEY_LEN = 200


class EventLogUnavailableError(OSError):
    """The log's storage cannot be reached or written right now (Redis down, paused or timing out;
    SQLite locked or its disk full). Transient by nature: the caller retries later (the server answers
    503 with Retry-After, the online trainer backs off). A batch that raised this may or may not have
    been written (a timeout after the write): retry it with the same idempotency key."""


MAX_REQUEST_ID_CHARS = 64  # what POST /recommend returns is 32 hex digits


@dataclass(frozen=True)
class Event:
    """One interaction as it arrives over HTTP: raw string ids, unix-second time, a kind and a value.

    Ids stay raw strings here; mapping them to model indices is the feature stage's job, and an
    item unknown to the current vocabulary must still be logged so the next vocabulary can see it.
    """

    user_id: str
    item_id: str
    timestamp: float
    event_type: str = "click"
    value: float = 1.0
    request_id: str | None = None  # the served list the event answers (experiments attribute it to its arm)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field; logs call it again before writing.

        Numbers are normalised to ``float`` so an ``int`` timestamp reads back identically from
        every backend.
        """
        for name in ("user_id", "item_id", "event_type"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ValueError(f"Event.{name} must be a non-empty string, got {text!r}")
            try:
                text.encode("utf-8")  # both backends store UTF-8; lone surrogates cannot be stored
            except UnicodeEncodeError as exc:
                raise ValueError(f"Event.{name} is not valid unicode text: {text!r}") from exc
        for name in ("timestamp", "value"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"Event.{name} must be a finite number, got {number!r}")
            object.__setattr__(self, name, float(number))
        if self.request_id is not None and (not isinstance(self.request_id, str) or not self.request_id
                                            or len(self.request_id) > MAX_REQUEST_ID_CHARS
                                            or not self.request_id.isascii()):
            raise ValueError(f"Event.request_id must be 1-{MAX_REQUEST_ID_CHARS} ASCII characters or None, "
                             f"got {self.request_id!r}")


@dataclass(frozen=True)
class LoggedEvent(Event):
    """An event as read back from a log, with the offset the log gave it (1 is the first event)."""

    offset: int = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or self.offset < 1:
            raise ValueError(f"LoggedEvent.offset must be an integer >= 1, got {self.offset!r}")

    def event(self) -> Event:
        """The event without its offset, e.g. to append it to another log."""
        return Event(self.user_id, self.item_id, self.timestamp, self.event_type, self.value, self.request_id)


def check_batch(events: Sequence[Event]) -> list[Event]:
    """Validate a whole batch before any of it is written, so a bad event rejects the batch.

    ``Event`` is frozen and validated on construction, but a batch can still hold something that is
    not an ``Event`` or an event altered through ``object.__setattr__``; re-checking is cheap next
    to a durable write.
    """
    batch = list(events)
    for position, event in enumerate(batch):
        if not isinstance(event, Event):
            raise TypeError(f"append() takes Event objects; item {position} is {type(event).__name__}")
        try:
            event.validate()
        except ValueError as exc:
            raise ValueError(f"event {position} of the batch: {exc}") from exc
    return batch


def check_idempotency_key(key: str | None) -> None:
    """Keys are short non-empty strings chosen by the client (a UUID per batch is the usual choice)."""
    if key is None:
        return
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_LEN:
        raise ValueError(f"idempotency_key must be a string of 1..{MAX_IDEMPOTENCY_KEY_LEN} characters, got {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"idempotency_key is not valid unicode text: {key!r}") from exc


def check_replay(key: str, offsets: list[int], size: int) -> list[int]:
    """The offsets remembered for ``key``, if the retried batch has the same size; a key reused for a
    different batch is a client bug, refused rather than silently answered with someone else's offsets."""
    if len(offsets) != size:
        raise ValueError(f"idempotency_key {key!r} was used for a batch of {len(offsets)} events, now for {size}; "
                         "use a new key per batch")
    return offsets


def check_read_args(after: int, limit: int, block_ms: int, limit_name: str = "limit") -> None:
    """Shared argument checks for the read calls, so both backends reject the same calls."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be an offset >= 0, got {after!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{limit_name} must be an integer >= 1, got {limit!r}")
    if isinstance(block_ms, bool) or not isinstance(block_ms, int) or block_ms < 0:
        raise ValueError(f"block_ms must be an integer >= 0 milliseconds, got {block_ms!r}")


def check_consumer(consumer: str) -> None:
    """Consumer names key committed positions; an empty or non-string name is always a bug."""
    if not isinstance(consumer, str) or not consumer:
        raise ValueError(f"consumer must be a non-empty string, got {consumer!r}")


def check_commit(consumer: str, offset: int, current: int, end: int) -> None:
    """The commit rules both backends enforce: never backwards, never past the last event.

    Committing the current position again is allowed, so a trainer that restarts from a checkpoint
    can re-commit the position the checkpoint recorded.
    """
    if offset < current:
        raise ValueError(
            f"commit({consumer!r}, {offset}) would move the position backwards from {current}; "
            "committed positions only grow (open a new consumer name to re-read the log)"
        )
    if offset > end:
        raise ValueError(f"commit({consumer!r}, {offset}) is past the end of the log (last offset {end})")


def check_offset(offset: int) -> None:
    """Offsets passed to ``commit`` are non-negative integers (0 means nothing processed)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"commit offset must be an integer >= 0, got {offset!r}")


@runtime_checkable
class EventLog(Protocol):
    """An append-only durable log of events with integer offsets and committed consumer positions.

    Semantics shared by every backend:

    * ``append`` returns strictly increasing offsets, starting at 1 and without gaps; the batch is
      durable when the call returns, and atomic (all of it is written or none).
    * ``read(after)`` returns events with offset > ``after`` in offset order, at most ``limit``;
      with ``block_ms > 0`` it waits up to that long when nothing is available yet.
    * ``append(events, idempotency_key=k)``: when a batch with key ``k`` was appended within the
      backend's window (``IDEMPOTENCY_WINDOW_S`` by default), nothing is written and that batch's
      offsets are returned again, so a client that retries after a timeout does not duplicate events.
    * Transient storage failures raise ``EventLogUnavailableError``; every Redis call has a timeout.
    * ``commit(consumer, offset)`` records that the consumer processed everything <= ``offset``;
      positions never go backwards and never pass ``end_offset()`` (``ValueError`` otherwise).

    Backends subclass this protocol to inherit ``lag``, ``aread``, ``aclose`` and the context manager.
    """

    def append(self, events: Sequence[Event], idempotency_key: str | None = None) -> list[int]:
        """Append a batch atomically and durably; return its offsets in order (the first batch's
        offsets again when ``idempotency_key`` was already used within the window)."""
        ...

    def read(self, after: int, limit: int = 1000, block_ms: int = 0) -> list[LoggedEvent]:
        """Events with offset > ``after`` in offset order, waiting up to ``block_ms`` for new ones."""
        ...

    def commit(self, consumer: str, offset: int) -> None:
        """Record that ``consumer`` has processed every event with offset <= ``offset``."""
        ...

    def committed(self, consumer: str) -> int:
        """The consumer's committed offset; 0 when it never committed."""
        ...

    def end_offset(self) -> int:
        """The offset of the last event; 0 when the log is empty."""
        ...

    def close(self) -> None:
        """Release connections; the log's contents stay where they are."""
        ...

    async def aread(self, after: int, limit: int = 1000) -> list[LoggedEvent]:
        """``read`` for a caller on an event loop (a server answering a request). Default: ``read`` in a
        worker thread. A network backend overrides it with an asyncio client: on a busy loop each thread
        hand-off waits for the GIL, which costs more than the read itself."""
        return await asyncio.to_thread(self.read, after, limit)

    async def aclose(self) -> None:
        """Release what ``aread`` opened on the running loop (``close`` releases the rest)."""
        return None

    def lag(self, consumer: str) -> int:
        """How many events the consumer has not committed yet.

        The position is read before the end: the end only grows, so the difference is never negative
        even while other processes append and commit.
        """
        position = self.committed(consumer)
        return self.end_offset() - position

    def __enter__(self: _LogT) -> _LogT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
