"""The production event log: a Redis Stream whose entry ids carry the integer offsets.

Several serving workers append to one stream; trainers tail it with ``read`` (the position lives in
the trainer's checkpoint) or take deliveries through a consumer group with ``read_group``. Either way
``commit`` stores the consumer's position in Redis, so ``lag`` works for monitoring.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from seekrec.online.event_log import (
    IDEMPOTENCY_WINDOW_S,
    Event,
    EventLog,
    EventLogUnavailableError,
    LoggedEvent,
    check_batch,
    check_commit,
    check_consumer,
    check_idempotency_key,
    check_offset,
    check_read_args,
    check_replay,
)

logger = logging.getLogger(__name__)

MIN_REDIS_VERSION = (6, 2)  # exclusive XRANGE starts, XPENDING ranges and XGROUP ... MKSTREAM
# replies that mean "this Redis cannot serve right now" (loading a dump, out of memory, cannot persist)
_TRANSIENT_REPLIES = ("LOADING", "OOM", "MISCONF", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _unavailable_on_outage(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a Redis outage (refused, reset, timed out, loading, OOM) into ``EventLogUnavailableError``;
    other errors (a bug, a foreign stream) pass through unchanged."""

    @wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            outage = _outage(args[0], exc)
            if outage is None:
                raise
            raise outage from exc

    return wrapper


def _outage(log: object, exc: redis.exceptions.RedisError) -> EventLogUnavailableError | None:
    """``EventLogUnavailableError`` when ``exc`` means Redis cannot serve right now; None for anything
    else (a bug, a foreign stream), which passes through unchanged."""
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)) or (
            isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)):
        return EventLogUnavailableError(f"event log {log!r} is unavailable: {exc}")
    return None

# Offsets live in the stream ids ("0-<offset>"), and the stream's own last-generated-id is the
# counter: a single source of truth that no separate key can contradict.
_LUA_HELPERS = """
local function seq(id)
  local n = string.match(id, '^0%-(%d+)$')
  if not n then error('seekrec: stream entry ' .. id .. ' was not written by a seekrec event log') end
  return tonumber(n)
end
local function end_offset(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return seq(info[i + 1]) end
  end
  error('seekrec: XINFO STREAM reported no last-generated-id')
end
"""

# KEYS: stream, then the idempotency key's Redis key when the batch has one. ARGV: the key's lifetime
# in seconds, then six fields per event (the last, the request id, empty when the event has none). Returns {first offset, count}: a new batch's, or the batch
# that first used the key. Checks run before the first write and XADD with a larger id cannot fail, so
# the batch (and its key) land whole or not at all.
_APPEND = _LUA_HELPERS + """
if #KEYS > 1 then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    local first, count = string.match(seen, '^(%d+):(%d+)$')
    return {tonumber(first), tonumber(count)}
  end
end
local last = end_offset(KEYS[1])
local n = (#ARGV - 1) / 6
for i = 0, n - 1 do
  local b = 1 + i * 6
  local id = string.format('0-%d', last + 1 + i)
  if ARGV[b + 6] == '' then
    redis.call('XADD', KEYS[1], id, 'u', ARGV[b + 1], 'i', ARGV[b + 2], 't', ARGV[b + 3], 'e', ARGV[b + 4],
               'v', ARGV[b + 5])
  else
    redis.call('XADD', KEYS[1], id, 'u', ARGV[b + 1], 'i', ARGV[b + 2], 't', ARGV[b + 3], 'e', ARGV[b + 4],
               'v', ARGV[b + 5], 'r', ARGV[b + 6])
  end
end
if #KEYS > 1 then
  redis.call('SET', KEYS[2], string.format('%d:%d', last + 1, n), 'EX', ARGV[1])
end
return {last + 1, n}
"""

_END = _LUA_HELPERS + "return end_offset(KEYS[1])"

# KEYS: stream, positions hash. ARGV: consumer, offset. Returns {ok, current, end}; the caller turns
# ok == 0 into the ValueError. Compare-and-set, acknowledgement and the group cursor move together.
_COMMIT = _LUA_HELPERS + """
local stream, consumer, offset = KEYS[1], ARGV[1], tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[2], consumer) or '0')
local last = end_offset(stream)
if offset < current or offset > last then return {0, current, last} end
if redis.call('EXISTS', stream) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, delivered
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    end
    if name == consumer then
      local upto = string.format('0-%d', offset)
      while true do
        local pending = redis.call('XPENDING', stream, consumer, '-', upto, 1000)
        if #pending == 0 then break end
        local ids = {}
        for i, entry in ipairs(pending) do ids[i] = entry[1] end
        redis.call('XACK', stream, consumer, unpack(ids))
      end
      -- a position committed through read() must not be delivered again through the group
      if seq(delivered) < offset then redis.call('XGROUP', 'SETID', stream, consumer, upto) end
    end
  end
end
redis.call('HSET', KEYS[2], consumer, ARGV[2])
return {1, current, last}
"""

# KEYS: stream, positions hash. ARGV: group. A new group starts at the consumer's committed position.
_ENSURE_GROUP = """
local position = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0-' .. position, 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP') then
  return redis.error_reply(created.err)
end
return 1
"""


def redact(url: str) -> str:
    """The url without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisEventLog(EventLog):
    """An ``EventLog`` on a Redis Stream: entry ``0-<n>`` is the event at offset ``n``.

    Keys: the stream itself and ``<stream>:committed`` (hash consumer -> offset). On Redis Cluster
    wrap the stream name in a hash tag (``"{seekrec:events}"``) so both keys share a slot, as the
    Lua scripts require.

    * ``append`` runs one Lua script that reads the stream's last id and XADDs the batch with the
      next explicit ids: atomic across concurrent appenders in any process, gap-free, all or none.
      On Redis >= 7 the scripts carry a ``#!lua`` header, so a server over ``maxmemory`` rejects
      the whole script up front instead of failing half-way through a batch.
    * ``read`` is XRANGE from an exclusive start; with ``block_ms`` it is XREAD BLOCK.
    * ``read_group(consumer, ...)`` delivers through the consumer group named after the consumer
      (XREADGROUP, at-least-once): first this member's pending, uncommitted deliveries (after a
      restart), then new entries. ``commit`` compare-and-sets the position, XACKs the group's
      deliveries up to it and moves the group's cursor forward, all in one script.

    Durability caveat: Redis acknowledges a write once it is in memory. No acknowledged event is lost
    when a *client* dies, but on a Redis crash only persistence helps: ``appendonly yes`` with
    ``appendfsync always`` fsyncs the AOF before replying (no loss, like SQLite FULL);
    ``everysec`` can lose about a second; RDB snapshots alone lose everything since the last one;
    replicas are asynchronous. The test machines run Redis without persistence (``--save ''``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        stream: str = "seekrec:events",
        *,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 5.0,
        idempotency_window_s: float = IDEMPOTENCY_WINDOW_S,
    ) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty key name, got {stream!r}")
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError(f"timeout_s and connect_timeout_s must be > 0 seconds, got {timeout_s}, {connect_timeout_s}")
        if not idempotency_window_s >= 1:
            raise ValueError(f"idempotency_window_s must be >= 1 second, got {idempotency_window_s}")
        self.url = redact(url)
        self._client_url = url  # with its password, for the asyncio client that ``aread`` opens
        self.stream = stream
        self.connect_timeout_s = connect_timeout_s
        self.positions_key = f"{stream}:committed"
        self.timeout_s = timeout_s
        self.idempotency_window_s = idempotency_window_s
        # Every call has a socket timeout, so a paused or unreachable Redis cannot hang a request or the
        # trainer; no automatic retries: re-sending an append after a timeout could write it twice (callers
        # retry with an idempotency key instead), and a fast failure lets the server answer 503 at once.
        # Blocking reads wait in slices shorter than the timeout (see ``_block_slices``).
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=connect_timeout_s,
                                           socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        try:
            version_text = str(self._redis.info("server")["redis_version"])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._redis.close()
            raise ConnectionError(
                f"cannot reach Redis at {self.url}: {exc}. Start one "
                "(redis-server --daemonize yes --port 6379) or pass another url"
            ) from exc
        version = tuple(int(part) for part in version_text.split(".")[:2])
        if version < MIN_REDIS_VERSION:
            self._redis.close()
            raise RuntimeError(f"Redis at {self.url} is {version_text}; the event log needs >= 6.2")
        # Redis 6 would read "#!lua" as a syntax error; Redis 7 needs it for the up-front OOM check.
        header, read_only = ("#!lua\n", "#!lua flags=no-writes\n") if version >= (7, 0) else ("", "")
        self._append_script = self._redis.register_script(header + _APPEND)
        self._end_script = self._redis.register_script(read_only + _END)
        self._commit_script = self._redis.register_script(header + _COMMIT)
        self._group_script = self._redis.register_script(header + _ENSURE_GROUP)
        self._lock = threading.Lock()
        self._groups: set[str] = set()
        self._pending: dict[tuple[str, str], str | None] = {}  # (group, member) -> history cursor
        self._closed = False
        self._async: tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis] | None = None  # aread's client

    def _client(self) -> redis.Redis:
        if self._closed:
            raise RuntimeError(f"the event log {self.stream!r} at {self.url} is closed; open a new RedisEventLog")
        return self._redis

    def _parse(self, entries: list[tuple[str, dict[str, str]]]) -> list[LoggedEvent]:
        events = []
        for entry_id, fields in entries:
            ms, _, offset = entry_id.partition("-")
            if ms != "0" or not {"u", "i", "t", "e", "v"} <= fields.keys():
                raise ValueError(f"stream {self.stream!r} holds entry {entry_id} not written by a seekrec event log")
            events.append(
                LoggedEvent(
                    fields["u"], fields["i"], float(fields["t"]), fields["e"], float(fields["v"]), fields.get("r"),
                    offset=int(offset)
                )
            )
        return events

    @_unavailable_on_outage
    def append(self, events: Sequence[Event], idempotency_key: str | None = None) -> list[int]:
        """Append a batch atomically (one Lua script) and return its offsets; the idempotency key is
        checked and stored by the same script (``<stream>:idem:<key>``, expiring after the window)."""
        batch = check_batch(events)
        check_idempotency_key(idempotency_key)
        if not batch:
            return []
        args: list[str] = [str(int(self.idempotency_window_s))]
        for e in batch:
            # repr() of a float round-trips exactly, so timestamps read back bit-identical
            args += [e.user_id, e.item_id, repr(e.timestamp), e.event_type, repr(e.value), e.request_id or ""]
        keys = [self.stream] if idempotency_key is None else [self.stream, f"{self.stream}:idem:{idempotency_key}"]
        first, count = (int(x) for x in self._append_script(keys=keys, args=args, client=self._client()))
        offsets = list(range(first, first + count))
        return offsets if idempotency_key is None else check_replay(idempotency_key, offsets, len(batch))

    @_unavailable_on_outage
    def read(self, after: int, limit: int = 1000, block_ms: int = 0) -> list[LoggedEvent]:
        """Events with offset > ``after``; XREAD BLOCK waits up to ``block_ms`` when none are there."""
        check_read_args(after, limit, block_ms)
        client = self._client()
        if block_ms == 0:  # XREAD BLOCK 0 would wait forever, so non-blocking reads use XRANGE
            return self._parse(client.xrange(self.stream, min=f"(0-{after}", max="+", count=limit))
        for block in self._block_slices(block_ms):
            reply: Any = client.xread({self.stream: f"0-{after}"}, count=limit, block=block)
            if reply:
                return self._parse(reply[0][1])
        return []

    async def aread(self, after: int, limit: int = 1000) -> list[LoggedEvent]:
        """``read`` (non-blocking) through an asyncio client on the running loop, with the same timeouts:
        the loop neither waits for the round trip nor hands the call to a thread."""
        check_read_args(after, limit, 0)
        try:
            entries = await self._async_client().xrange(self.stream, min=f"(0-{after}", max="+", count=limit)
        except redis.exceptions.RedisError as exc:
            outage = _outage(self, exc)
            if outage is None:
                raise
            raise outage from exc
        return self._parse(entries)

    def _async_client(self) -> redis.asyncio.Redis:
        """The asyncio client of the running loop (one per loop: a client cannot move between loops)."""
        self._client()  # raises once closed
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            client = redis.asyncio.Redis.from_url(
                self._client_url, decode_responses=True, socket_connect_timeout=self.connect_timeout_s,
                socket_timeout=self.timeout_s, retry=AsyncRetry(NoBackoff(), 0))
            self._async = (loop, client)
        return self._async[1]

    async def aclose(self) -> None:
        """Close ``aread``'s client (idempotent)."""
        if self._async is not None:
            _, client = self._async
            self._async = None
            await client.aclose()

    def _block_slices(self, block_ms: int) -> Iterator[int]:
        """``block_ms`` cut into waits of at most half the socket timeout, so a blocking read never
        looks like a dead connection; the slices stop when the whole wait is spent."""
        deadline = time.monotonic() + block_ms / 1000
        longest = max(1, int(self.timeout_s * 500))
        while (remaining := int((deadline - time.monotonic()) * 1000)) > 0:
            yield min(remaining, longest)

    @_unavailable_on_outage
    def read_group(
        self, consumer: str, count: int = 1000, block_ms: int = 0, *, member: str = "main"
    ) -> list[LoggedEvent]:
        """Deliveries to ``member`` of the consumer group ``consumer``; acknowledged by ``commit``.

        Delivery is at-least-once: after a crash, the entries this member received but whose offsets
        were never committed come first, then entries never delivered to the group. A consumer that
        also restores a position from its checkpoint should skip offsets at or below it.
        """
        check_consumer(consumer)
        check_consumer(member)
        check_read_args(0, count, block_ms, limit_name="count")
        client = self._client()
        with self._lock:
            if consumer not in self._groups:
                self._group_script(keys=[self.stream, self.positions_key], args=[consumer], client=client)
                self._groups.add(consumer)
            cursor = self._pending.get((consumer, member), "0-0")
        if cursor is not None:  # replay this member's history (pending deliveries) before new entries
            reply: Any = client.xreadgroup(consumer, member, {self.stream: cursor}, count=count)
            history = reply[0][1] if reply else []
            with self._lock:
                self._pending[(consumer, member)] = history[-1][0] if history else None
            if history:
                return self._parse(history)
        if block_ms == 0:
            reply = client.xreadgroup(consumer, member, {self.stream: ">"}, count=count)
            return self._parse(reply[0][1]) if reply else []
        for block in self._block_slices(block_ms):
            reply = client.xreadgroup(consumer, member, {self.stream: ">"}, count=count, block=block)
            if reply:
                return self._parse(reply[0][1])
        return []

    @_unavailable_on_outage
    def commit(self, consumer: str, offset: int) -> None:
        """Compare-and-set the position, acknowledging the group's deliveries up to ``offset``."""
        check_consumer(consumer)
        check_offset(offset)
        ok, current, end = self._commit_script(
            keys=[self.stream, self.positions_key], args=[consumer, offset], client=self._client()
        )
        if not ok:
            check_commit(consumer, offset, int(current), int(end))

    @_unavailable_on_outage
    def committed(self, consumer: str) -> int:
        check_consumer(consumer)
        position = self._client().hget(self.positions_key, consumer)
        return 0 if position is None else int(position)

    @_unavailable_on_outage
    def end_offset(self) -> int:
        return int(self._end_script(keys=[self.stream], client=self._client()))

    def close(self) -> None:
        """Close the connection pool (idempotent); the stream stays in Redis."""
        if not self._closed:
            self._closed = True
            self._redis.close()

    def __repr__(self) -> str:
        return f"RedisEventLog({self.url!r}, stream={self.stream!r})"
