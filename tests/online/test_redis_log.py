"""Redis-only behaviour: consumer-group delivery acknowledged by commit, foreign entries, connection errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from seekrec.online.event_log import Event

redis = pytest.importorskip("redis", reason="the redis package is not installed (pip install 'redis>=5,<7')")
from seekrec.online.redis_log import RedisEventLog, redact  # noqa: E402  (needs the redis package)


def events(n: int, start: int = 0) -> list[Event]:
    return [Event(f"u{k}", f"i{k}", float(k)) for k in range(start, start + n)]


@pytest.fixture
def log(redis_url: str, redis_prefix: str) -> Iterator[RedisEventLog]:
    with RedisEventLog(redis_url, f"{redis_prefix}:events") as opened:
        yield opened


def pending(log: RedisEventLog, group: str) -> int:
    return log._redis.xpending(log.stream, group)["pending"]


def offsets(got) -> list[int]:
    return [e.offset for e in got]


def test_group_deliveries_are_acknowledged_by_commit(log):
    log.append(events(5))
    assert offsets(log.read_group("trainer", count=3)) == [1, 2, 3]
    assert pending(log, "trainer") == 3
    log.commit("trainer", 2)
    assert pending(log, "trainer") == 1 and log.committed("trainer") == 2
    assert offsets(log.read_group("trainer")) == [4, 5]
    log.commit("trainer", 5)
    assert pending(log, "trainer") == 0 and log.lag("trainer") == 0
    assert log.read_group("trainer") == []


def test_a_restarted_member_gets_its_uncommitted_deliveries_first(log, redis_url):
    log.append(events(5))
    assert offsets(log.read_group("trainer", count=5)) == [1, 2, 3, 4, 5]
    log.commit("trainer", 2)
    with RedisEventLog(redis_url, log.stream) as restarted:  # the crashed trainer, back up
        assert offsets(restarted.read_group("trainer", count=2)) == [3, 4]
        assert offsets(restarted.read_group("trainer", count=2)) == [5]
        assert restarted.read_group("trainer") == []
        restarted.append(events(1, start=5))
        assert offsets(restarted.read_group("trainer")) == [6]
        assert offsets(restarted.read_group("trainer", member="other")) == []  # history is per member


def test_groups_follow_positions_committed_through_read(log):
    log.append(events(6))
    log.commit("late", 2)
    assert offsets(log.read_group("late")) == [3, 4, 5, 6]  # a new group starts at the committed position
    assert offsets(log.read_group("early", count=1)) == [1]
    log.commit("early", 4)  # committed after read(): the group must not deliver 2..4 any more
    assert pending(log, "early") == 0
    assert offsets(log.read_group("early")) == [5, 6]


def test_blocking_group_reads_wait_for_new_events_and_time_out_empty(log):
    start = time.monotonic()
    assert log.read_group("trainer", block_ms=150) == []
    assert time.monotonic() - start >= 0.14
    timer = threading.Timer(0.2, log.append, args=(events(2),))
    timer.start()
    try:
        assert offsets(log.read_group("trainer", block_ms=5000)) == [1, 2]
    finally:
        timer.join()
    with pytest.raises(ValueError, match="count"):
        log.read_group("trainer", count=0)


def test_a_stream_with_foreign_entries_is_refused(log):
    log._redis.xadd(log.stream, {"user": "u1"})  # an auto id ("<ms>-0"), not written by an event log
    with pytest.raises(ValueError, match="not written by a seekrec event log"):
        log.read(0)
    with pytest.raises(redis.exceptions.ResponseError, match="not written by a seekrec event log"):
        log.append(events(1))


def test_an_unreachable_server_raises_a_connection_error_saying_how_to_start_one():
    with pytest.raises(ConnectionError, match="cannot reach Redis at redis://127.0.0.1:1/0.*redis-server"):
        RedisEventLog("redis://127.0.0.1:1/0", connect_timeout_s=0.5)


def test_passwords_are_redacted_from_urls():
    assert redact("redis://:s3cret@db.example:6380/2") == "redis://:***@db.example:6380/2"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_a_paused_redis_times_out_and_a_restarted_one_serves_again(throwaway_redis):
    from seekrec.online.event_log import EventLogUnavailableError

    with RedisEventLog(throwaway_redis.url, "faults:events", timeout_s=0.5) as log:
        log.append(events(2))
        throwaway_redis.pause()
        try:
            for call in (lambda: log.append(events(1), idempotency_key="retry-me"), log.end_offset,
                         lambda: log.read(0), lambda: log.commit("c", 1), lambda: log.read(0, block_ms=100)):
                start = time.monotonic()
                with pytest.raises(EventLogUnavailableError, match="unavailable"):
                    call()
                assert time.monotonic() - start < 3  # the timeout, not a hang (nor redis-py's backoff retries)
        finally:
            throwaway_redis.resume()
        # the append that timed out may have landed (it did not here: the server was frozen); the
        # client's retry with its key writes it at most once
        assert log.append(events(1), idempotency_key="retry-me") == [3]
        assert log.append(events(1), idempotency_key="retry-me") == [3]
        throwaway_redis.stop()
        with pytest.raises(EventLogUnavailableError):
            log.end_offset()


def test_blocking_reads_longer_than_the_socket_timeout_still_wait(throwaway_redis):
    with RedisEventLog(throwaway_redis.url, "faults:events", timeout_s=0.3) as log:
        start = time.monotonic()
        assert log.read(0, block_ms=800) == [] and log.read_group("g", block_ms=800) == []
        assert 1.4 < time.monotonic() - start < 4
