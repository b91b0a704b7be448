"""The shared EventLog suite: every backend runs every test here, so their semantics cannot drift."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seekrec.online.event_log import Event, EventLog, LoggedEvent

WORKER = Path(__file__).with_name("append_worker.py")


def events(n: int, start: int = 0) -> list[Event]:
    kinds = ("buy", "click")
    return [Event(f"u{k % 3}", f"i{k}", 1_700_000_000.0 + k, kinds[k % 2], k / 2) for k in range(start, start + n)]


def read_all(log: EventLog) -> list[LoggedEvent]:
    out: list[LoggedEvent] = []
    while batch := log.read(out[-1].offset if out else 0, limit=500):
        out += batch
    return out


def test_append_returns_consecutive_offsets_from_one_and_reads_back_in_order(log):
    assert log.end_offset() == 0 and log.read(0) == [] and log.append([]) == []
    assert log.append(events(3)) == [1, 2, 3]
    assert log.append(events(2, start=3)) == [4, 5]
    got = log.read(0)
    assert [e.offset for e in got] == [1, 2, 3, 4, 5]
    assert [e.event() for e in got] == events(5)
    assert isinstance(log, EventLog) and log.end_offset() == 5


def test_read_after_and_limit(log):
    log.append(events(10))
    assert [e.offset for e in log.read(3, limit=4)] == [4, 5, 6, 7]
    assert [e.offset for e in log.read(8)] == [9, 10]
    assert log.read(10) == [] and log.read(500) == []
    with pytest.raises(ValueError, match="limit"):
        log.read(0, limit=0)
    with pytest.raises(ValueError, match="after"):
        log.read(-1)
    with pytest.raises(ValueError, match="block_ms"):
        log.read(0, block_ms=-5)


def test_aread_on_an_event_loop_reads_what_read_reads(log):
    log.append(events(7))

    async def both_ways() -> list[list[LoggedEvent]]:
        try:
            return [await log.aread(after, limit) for after, limit in ((0, 1000), (2, 3), (7, 10))]
        finally:
            await log.aclose()

    assert asyncio.run(both_ways()) == [log.read(0), log.read(2, 3), []]
    with pytest.raises(ValueError, match="after"):
        asyncio.run(log.aread(-1))


def test_a_bad_event_rejects_the_whole_batch(log):
    log.append(events(2))
    with pytest.raises(TypeError, match="item 1"):
        log.append([events(1)[0], {"user_id": "u", "item_id": "i"}])
    corrupted = Event("u", "i", 1.0)
    object.__setattr__(corrupted, "user_id", "")  # a frozen event altered after validation
    with pytest.raises(ValueError, match="event 2 of the batch.*user_id"):
        log.append([*events(2), corrupted, *events(2)])
    assert log.end_offset() == 2 and [e.offset for e in log.read(0)] == [1, 2]
    assert log.append(events(1)) == [3]  # the rejected batches consumed no offsets


def test_blocking_read_returns_events_appended_while_waiting(log):
    log.append(events(1))
    timer = threading.Timer(0.2, log.append, args=(events(2, start=1),))
    start = time.monotonic()
    timer.start()
    try:
        got = log.read(1, block_ms=5000)
    finally:
        timer.join()
    assert 0.1 < time.monotonic() - start < 4
    assert got and got[0].offset == 2 and got[0].item_id == "i1"


def test_blocking_read_times_out_empty_and_returns_at_once_when_events_exist(log):
    start = time.monotonic()
    assert log.read(0, block_ms=150) == []
    assert time.monotonic() - start >= 0.14
    log.append(events(1))
    start = time.monotonic()
    assert [e.offset for e in log.read(0, block_ms=5000)] == [1]
    assert time.monotonic() - start < 1


def test_commit_positions_only_move_forward_and_never_past_the_end(log):
    assert log.committed("trainer") == 0 and log.lag("trainer") == 0
    log.commit("trainer", 0)  # nothing processed yet is a valid position, even on an empty log
    log.append(events(5))
    assert log.lag("trainer") == 5
    log.commit("trainer", 3)
    assert log.committed("trainer") == 3 and log.lag("trainer") == 2
    log.commit("trainer", 3)  # re-committing the same position (after a restart) is fine
    with pytest.raises(ValueError, match="backwards from 3"):
        log.commit("trainer", 2)
    with pytest.raises(ValueError, match="past the end.*5"):
        log.commit("trainer", 6)
    with pytest.raises(ValueError, match="offset"):
        log.commit("trainer", -1)
    with pytest.raises(ValueError, match="consumer"):
        log.commit("", 1)
    assert log.committed("trainer") == 3 and log.committed("other") == 0 and log.lag("other") == 5
    log.commit("trainer", 5)
    assert log.lag("trainer") == 0 and log.end_offset() == 5


def test_concurrent_commits_keep_the_largest_position(log):
    log.append(events(200))
    accepted: list[int] = []

    def committer(seed: int) -> None:
        for offset in sorted(random.Random(seed).sample(range(1, 201), 30)):
            try:
                log.commit("c", offset)
                accepted.append(offset)
            except ValueError:
                pass  # another thread committed further already: exactly the rule under test

    threads = [threading.Thread(target=committer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert log.committed("c") == max(accepted)


def test_reopening_keeps_events_positions_and_the_next_offset(target, log):
    log.append(events(4))
    log.commit("trainer", 2)
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        log.append(events(1))
    with target.open() as again:
        assert [e.event() for e in read_all(again)] == events(4)
        assert again.committed("trainer") == 2 and again.end_offset() == 4 and again.lag("trainer") == 2
        assert again.append(events(1, start=4)) == [5]


def test_concurrent_appends_get_unique_gap_free_offsets(target, log):
    n_threads, n_batches, size = 6, 15, 3
    barrier = threading.Barrier(n_threads)
    results: dict[int, list[list[int]]] = {}

    def appender(t: int) -> None:
        # half the threads share one instance, half open their own (separate connections)
        own = t % 2 == 1
        mine = target.open() if own else log
        barrier.wait()
        try:
            results[t] = [mine.append(events(size, start=100 * t + 10 * b)) for b in range(n_batches)]
        finally:
            if own:
                mine.close()

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = [offsets for per_thread in results.values() for offsets in per_thread]
    assert len(batches) == n_threads * n_batches
    assert sorted(o for offsets in batches for o in offsets) == list(range(1, n_threads * n_batches * size + 1))
    assert all(offsets == list(range(offsets[0], offsets[0] + size)) for offsets in batches)  # contiguous
    by_offset = {e.offset: e for e in read_all(log)}
    for t, per_thread in results.items():
        for b, offsets in enumerate(per_thread):
            assert [by_offset[o].event() for o in offsets] == events(size, start=100 * t + 10 * b)


def kill_worker_at_random(url: str, size: int, first_k: int, rng: random.Random, log: EventLog) -> list[list[int]]:
    """Run the append worker, SIGKILL it after a random number of acks, return every acked line."""
    acks_before_kill, before = rng.randint(10, 150), log.end_offset()
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), url, str(size), str(first_k)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        # a reader in this process sees, and blocks until, what the other process appends
        if not log.read(before, block_ms=10_000):
            pytest.fail(f"no event from the append worker within 10 s (exit status {worker.poll()})")
        while len(lines) < acks_before_kill and (line := worker.stdout.readline()):
            lines.append(line)
        time.sleep(rng.uniform(0, 0.01))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        lines += worker.stdout.read().splitlines(keepends=True)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stdout.close()
        worker.stderr.close()
    assert worker.returncode == -signal.SIGKILL, f"the worker was not killed: {worker.returncode}"
    assert len(lines) >= acks_before_kill
    return [[int(x) for x in line.split()] for line in lines if line.endswith("\n")]  # a torn line is no ack


def test_acknowledged_appends_survive_sigkilled_writers(target, log):
    rng = random.Random(f"crash-{target.backend}")
    size, acked = 3, []
    for round_ in range(3):  # each round's writer resumes on the log the last one was killed over
        acked += kill_worker_at_random(target.url, size, 100_000 * round_, rng, log)

    with target.open() as reopened:
        stored = {e.offset: e for e in read_all(reopened)}
        assert sorted(stored) == list(range(1, reopened.end_offset() + 1))  # gap-free
    for k, *offsets in acked:
        expected = [Event(f"u{k}", f"i{k}-{j}", float(k), value=float(j)) for j in range(size)]
        assert [stored[o].event() for o in offsets] == expected, f"acknowledged batch {k} lost or altered"
    assert len(stored) % size == 0  # a batch being written at a kill is all there or not at all
    for first_offset in range(1, len(stored) + 1, size):
        k = int(stored[first_offset].user_id[1:])
        assert [stored[first_offset + j].item_id for j in range(size)] == [f"i{k}-{j}" for j in range(size)]


texts = st.text(min_size=1, max_size=20)
numbers = st.floats(allow_nan=False, allow_infinity=False)
request_ids = st.none() | st.text(st.characters(codec="ascii"), min_size=1, max_size=64)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.builds(Event, texts, texts, numbers, texts, numbers, request_ids), min_size=1, max_size=4))
def test_any_valid_event_round_trips_exactly(log, batch):
    offsets = log.append(batch)
    assert [e.event() for e in log.read(offsets[0] - 1, limit=len(batch))] == batch


def test_a_retried_batch_with_the_same_idempotency_key_is_written_once(target, log):
    assert log.append(events(3), idempotency_key="batch-a") == [1, 2, 3]
    assert log.append(events(3), idempotency_key="batch-a") == [1, 2, 3]  # the client's retry
    assert log.append(events(2, start=3), idempotency_key="batch-b") == [4, 5]
    assert log.append(events(1, start=5)) == [6]  # no key: always appended
    assert log.end_offset() == 6 and [e.event() for e in read_all(log)] == events(6)
    reopened = target.open()
    try:  # the key is durable with its batch: a retry reaching a restarted server is still recognised
        assert reopened.append(events(2, start=3), idempotency_key="batch-b") == [4, 5]
        assert reopened.end_offset() == 6
    finally:
        reopened.close()


def test_an_idempotency_key_reused_for_another_batch_or_malformed_is_refused(log):
    log.append(events(2), idempotency_key="k")
    with pytest.raises(ValueError, match="idempotency_key 'k' was used for a batch of 2"):
        log.append(events(3), idempotency_key="k")
    for bad in ("", "x" * 201, 7):
        with pytest.raises(ValueError, match="idempotency_key"):
            log.append(events(1), idempotency_key=bad)
    assert log.end_offset() == 2


def test_idempotency_keys_expire_after_the_window(target):
    from seekrec.online.redis_log import RedisEventLog
    from seekrec.online.sqlite_log import SqliteEventLog

    if target.backend == "sqlite":
        opened: EventLog = SqliteEventLog(target.url.split("://", 1)[1], idempotency_window_s=1.0)
    else:
        url, _, stream = target.url.partition("?stream=")
        opened = RedisEventLog(url, stream, idempotency_window_s=1.0)
    with opened:
        assert opened.append(events(1), idempotency_key="k") == [1]
        time.sleep(2.2)  # Redis expiry has one-second resolution
        assert opened.append(events(1), idempotency_key="k") == [2]  # remembered only within the window
