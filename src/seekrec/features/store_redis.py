"""Redis feature store backend: hashes for attributes, lists for sequences, sorted sets for windows.

Keys under ``{prefix}``: ``attr:{side}:{id}`` (hash, JSON values), ``seq:{user}`` (list of JSON
``[item, time]``, trimmed to the sequence length), ``win:{side}:{id}`` (sorted set of events scored
by time, pruned to the longest window), ``offset`` and ``counter``. A read pipelines every command
of a request, so one request is one round-trip; an ``append`` is one MULTI/EXEC transaction (after
one ``INCRBY`` that reserves unique sorted-set members), so a batch and its offset land together.
One process (the event consumer) should apply events; any number may read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from seekrec.features.rows import check_side
from seekrec.features.store import EntityState, StoreLimits


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

    def append(self, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float], offset: int) -> None:
        n = len(users)
        first = int(self._client.incrby(self._key("counter"), n)) - n if n and self.limits.horizon_s else 0
        pipe = self._client.pipeline(transaction=True)
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
        pipe.execute()

    def read(self, side: str, ids: Sequence[str], now: Sequence[float], windows_s: Sequence[int],
             history: bool) -> list[EntityState]:
        check_side(side)
        history = history and side == "user"
        pipe = self._client.pipeline(transaction=False)
        for key, t in zip(ids, now):
            pipe.hgetall(self._key("attr", side, key))
            if history:
                pipe.lrange(self._key("seq", key), 0, -1)
            for w in windows_s:
                pipe.zcount(self._key("win", side, key), float(t) - w, f"({float(t)!r}")
        replies = iter(pipe.execute())
        out = []
        for _ in ids:
            attributes = {field: json.loads(value) for field, value in next(replies).items()}
            past = tuple((str(i), float(t)) for i, t in map(json.loads, next(replies))) if history else ()
            counts = tuple(int(next(replies)) for _ in windows_s)
            out.append(EntityState(attributes, past, counts))
        return out

    def offset(self) -> int:
        value = self._client.get(self._key("offset"))
        return int(value) if value is not None else 0

    def close(self) -> None:
        self._client.close()
