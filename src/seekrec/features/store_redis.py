"""Redis feature store backend: hashes for attributes, lists for sequences, sorted sets for windows.

Keys under ``{prefix}``: ``attr:{side}:{id}`` (hash, JSON values), ``seq:{user}`` (list of JSON
``[item, time]``, trimmed to the sequence length), ``win:{side}:{id}`` (sorted set of events scored
by time, pruned to the longest window), ``offset`` and ``counter``. A read pipelines every command
of a request, so one request is one round-trip; an ``append`` is one MULTI/EXEC transaction (after
one ``INCRBY`` that reserves unique sorted-set members), so a batch and its offset land together.
Several processes (server replicas) may apply the same logged events: ``append(..., expected=)``
is a compare-and-set on ``offset`` (WATCH/MULTI), so each event is applied once; ``run_once`` lets
one of them fill a fresh store while the others wait.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from seekrec.features.rows import check_side
from seekrec.features.store import EntityState, StoreLimits

log = logging.getLogger(__name__)
LEASE_S = 30  # a run_once worker holds its lease this long past its last heartbeat (a third of it)
_DONE = "done"
# KEYS: the once-key. ARGV: this worker's token. Gives the lease back only if this worker still holds it.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
# KEYS: the once-key. ARGV: token, lease ms. Extends the lease only if this worker still holds it.
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# KEYS: the once-key. ARGV: token. Marks the work done (for good) only if this worker still holds the lease.
_FINISH = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], '" + _DONE + "') return 1 end "
           "return 0")


class RedisBackend:
    """Feature state in Redis at ``url``, every key under ``prefix``."""

    def __init__(self, url: str, prefix: str, limits: StoreLimits, client: redis.Redis | None = None) -> None:
        if not prefix:
            raise ValueError("prefix must be a non-empty key prefix, e.g. 'seekrec:features'")
        self.limits = limits
        self.prefix = prefix
        self._client = client or redis.Redis.from_url(url, decode_responses=True)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def put_attributes(self, side: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        check_side(side)
        pipe = self._client.pipeline(transaction=True)
        for key, record in records.items():
            name = self._key("attr", side, key)
            pipe.delete(name)
            if record:
                pipe.hset(name, mapping={field: json.dumps(value) for field, value in record.items()})
        pipe.execute()

    def append(self, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float], offset: int,
               expected: int | None = None) -> bool:
        n = len(users)
        first = int(self._client.incrby(self._key("counter"), n)) - n if n and self.limits.horizon_s else 0
        pipe = self._client.pipeline(transaction=True)
        if expected is not None:  # compare-and-set: EXEC fails if another writer sets the offset meanwhile
            pipe.watch(self._key("offset"))
            current = pipe.get(self._key("offset"))
            if (int(current) if current is not None else 0) != expected:
                pipe.reset()
                return False
            pipe.multi()
        latest: dict[str, float] = {}  # window key -> newest time in this batch
        for k, (user, item, ts) in enumerate(zip(users, items, timestamps)):
            ts = float(ts)
            if self.limits.sequence_len:
                pipe.rpush(self._key("seq", user), json.dumps([item, ts]))
            if self.limits.horizon_s:
                for side, entity in (("user", user), ("item", item)):
                    name = self._key("win", side, entity)
                    pipe.zadd(name, {str(first + k): ts})
                    latest[name] = max(ts, latest.get(name, ts))
        if self.limits.sequence_len:
            for user in dict.fromkeys(users):
                pipe.ltrim(self._key("seq", user), -self.limits.sequence_len, -1)
        for name, newest in latest.items():  # drop times older than the longest window needs
            pipe.zremrangebyscore(name, "-inf", f"({newest - self.limits.horizon_s!r}")
        pipe.set(self._key("offset"), int(offset))
        try:
            pipe.execute()
        except redis.WatchError:
            return False
        return True

    def read(self, side: str, ids: Sequence[str], now: Sequence[float], windows_s: Sequence[int],
             history: bool, attributes: bool | Sequence[bool] = True) -> list[EntityState]:
        check_side(side)
        history = history and side == "user"
        flags = [attributes] * len(ids) if isinstance(attributes, bool) else list(attributes)
        pipe = self._client.pipeline(transaction=False)
        for key, t, with_attributes in zip(ids, now, flags):
            if with_attributes:
                pipe.hgetall(self._key("attr", side, key))
            if history:
                pipe.lrange(self._key("seq", key), 0, -1)
            for w in windows_s:
                pipe.zcount(self._key("win", side, key), float(t) - w, f"({float(t)!r}")
        replies = iter(pipe.execute())
        out = []
        for with_attributes in flags:
            attrs = {field: json.loads(value) for field, value in next(replies).items()} if with_attributes else {}
            past = tuple((str(i), float(t)) for i, t in map(json.loads, next(replies))) if history else ()
            counts = tuple(int(next(replies)) for _ in windows_s)
            out.append(EntityState(attrs, past, counts))
        return out

    def run_once(self, name: str, work: Callable[[], None], wait_s: float) -> bool:
        """Run ``work`` in one process of all those sharing this prefix; the others wait until it is done
        (True: this process ran it). The worker holds a lease it renews while working; if it dies, the
        lease runs out and the next process clears the half-done state and runs ``work`` again.
        ``TimeoutError`` after ``wait_s`` seconds without the work done."""
        key, token = self._key("once", name), uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while True:
            if self._client.set(key, token, nx=True, px=LEASE_S * 1000):
                break
            if self._client.get(key) == _DONE:
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.prefix}: {name!r} was not done by another process within {wait_s:.0f} s")
            time.sleep(0.2)
        stop = threading.Event()
        renew = self._client.register_script(_RENEW)

        def heartbeat() -> None:
            while not stop.wait(LEASE_S / 3):
                renew(keys=[key], args=[token, LEASE_S * 1000])

        beating = threading.Thread(target=heartbeat, name=f"{name}-lease", daemon=True)
        beating.start()
        try:
            self._clear(keep=key)  # what a worker that died half-way left behind
            work()
        except BaseException:
            stop.set()
            self._client.register_script(_RELEASE)(keys=[key], args=[token])
            raise
        finally:
            stop.set()
            beating.join()
        if not self._client.register_script(_FINISH)(keys=[key], args=[token]):
            raise RuntimeError(f"{self.prefix}: this process lost its lease on {name!r} while working (stalled over "
                               f"{LEASE_S} s); another process is redoing it")
        log.info("%s: %s done by this process", self.prefix, name)
        return True

    def _clear(self, keep: str) -> None:
        """Delete every key under the prefix but ``keep``."""
        batch = [k for k in self._client.scan_iter(match=f"{self.prefix}:*", count=1000) if k != keep]
        for lo in range(0, len(batch), 1000):
            self._client.delete(*batch[lo:lo + 1000])

    def offset(self) -> int:
        value = self._client.get(self._key("offset"))
        return int(value) if value is not None else 0

    def close(self) -> None:
        self._client.close()
