"""Event log fixtures: one fresh log per test for each backend (SQLite in tmp_path, Redis on loopback).

Redis tests talk to a real server. Without one they are skipped, unless SEEKREC_REQUIRE_SERVICES=1
(set in CI), where a missing server must fail the run instead of silently shrinking it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from seekrec.online.events import EventLog
from seekrec.online.factory import open_event_log

REDIS_URL = os.environ.get("SEEKREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_REDIS = "redis-server --daemonize yes --port 6379 --save ''"


@dataclass(frozen=True)
class LogTarget:
    """Where one test's log lives; ``open()`` gives a new instance on the same storage (a "reopen")."""

    backend: str
    url: str

    def open(self) -> EventLog:
        return open_event_log(self.url)


def _redis_problem(url: str) -> str | None:
    """Why Redis cannot be used for the tests, or ``None`` when it answers."""
    try:
        import redis
    except ModuleNotFoundError:
        return "the redis package is not installed (pip install 'redis>=5,<7')"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return f"no answer from {url} ({exc})"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    problem = _redis_problem(REDIS_URL)
    if problem is not None:
        if os.environ.get("SEEKREC_REQUIRE_SERVICES") == "1":
            pytest.fail(
                f"SEEKREC_REQUIRE_SERVICES=1 but Redis is unavailable: {problem}. "
                f"Start it with `{START_REDIS}` or point SEEKREC_TEST_REDIS_URL at one.",
                pytrace=False,
            )
        pytest.skip(f"Redis unavailable: {problem}; start it with `{START_REDIS}`")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"seekrec-test:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "redis"])
def target(request: pytest.FixtureRequest, tmp_path) -> LogTarget:
    if request.param == "sqlite":
        return LogTarget("sqlite", f"sqlite://{tmp_path / 'events.db'}")
    prefix = request.getfixturevalue("redis_prefix")
    return LogTarget("redis", f"{request.getfixturevalue('redis_url')}?stream={prefix}:events")


@pytest.fixture
def log(target: LogTarget) -> Iterator[EventLog]:
    opened = target.open()
    yield opened
    opened.close()
