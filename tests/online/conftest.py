"""Event log fixtures: one fresh log per test for each backend (SQLite in tmp_path, Redis on loopback
through the ``redis_url`` / ``redis_prefix`` fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from seekrec.online.event_log import EventLog
from seekrec.online.factory import open_event_log


@dataclass(frozen=True)
class LogTarget:
    """Where one test's log lives; ``open()`` gives a new instance on the same storage (a "reopen")."""

    backend: str
    url: str

    def open(self) -> EventLog:
        return open_event_log(self.url)


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
