"""Served-list logs: the record, both backends (SQLite incl. a reader in another process; Redis on a real
server), the url factory, and the background writer that must never block a request."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from seekrec.experiments.outcome_stores import RedisOutcomeLog, SqliteOutcomeLog, open_outcome_log
from seekrec.experiments.outcomes import (
    CLOSED,
    QUEUE_FULL,
    WRITE_FAILED,
    BackgroundWriter,
    OutcomeLog,
    OutcomeLogUnavailableError,
    ServedList,
    new_request_id,
)
from seekrec.online.sqlite_log import SqliteEventLog

SRC = Path(__file__).resolve().parents[2] / "src"
T0 = float(int(time.time()) - 100)  # recent: Redis bounded reads look near the arrival time (slack 300 s)


@pytest.fixture(autouse=True)
def _recent_t0(monkeypatch: pytest.MonkeyPatch) -> None:
    """T0 100 s before each test starts, not before the module was imported: a long suite may run this test
    minutes after collection, past the Redis reads' 300 s slack around the records' arrival."""
    monkeypatch.setitem(globals(), "T0", float(int(time.time()) - 100))


def served(k: int, user: str = "u1", arm: str = "control", t: float | None = None, **kw: object) -> ServedList:
    fields: dict[str, object] = dict(request_id=f"r{k}", user_id=user, time=T0 + k if t is None else t,
                                     arms={"ranker": arm}, version="v1", items=[f"i{k}", f"i{k + 1}"],
                                     latency_ms=5.0 + k, fallback=False)
    fields.update(kw)
    return ServedList(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the record


def test_request_ids_are_unique_hex():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_a_served_list_round_trips_through_json_exactly():
    record = served(1, teams=[0, 1], time=1712345678.123456789, arms={"ranker": "b", "ui": "dense"})
    back = ServedList.from_json(record.to_json())
    assert back == record and back.items == ("i1", "i2") and back.teams == (0, 1) and back.time == record.time


@pytest.mark.parametrize(("change", "message"), [
    ({"time": float("nan")}, "ServedList.time must be a finite number >= 0, got nan"),
    ({"latency_ms": -1.0}, "ServedList.latency_ms"),
    ({"teams": [0]}, r"one team per item \(2 items\): 0 or 1, plus 2 for an item both rankers show; got \[0\]"),
    ({"teams": [0, 4]}, "got \\[0, 4\\]"),
    ({"items": "i1"}, "sequence of item ids, got 'i1'"),
    ({"arms": {"ranker": ""}}, "arms\\['ranker'\\]"),
    ({"request_id": ""}, "ServedList.request_id"),
    ({"fallback": 1}, "fallback must be a bool, got 1"),
])
def test_bad_records_are_refused_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        served(1, **change)


def test_from_json_refuses_foreign_text():
    with pytest.raises(ValueError, match="not a served-list record"):
        ServedList.from_json('{"user": "u1"}')
    with pytest.raises(ValueError, match="invalid JSON"):
        ServedList.from_json("not json")


# -------------------------------------------------------------------------------------- both backends


@pytest.fixture(params=["sqlite", "redis"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'served.db'}"
    return f"{request.getfixturevalue('redis_url')}?stream={request.getfixturevalue('redis_prefix')}:served"


def test_round_trip_with_time_and_arm_filters(log_url: str):
    records = [served(k, user=f"u{k % 3}", arm="control" if k % 2 else "treatment") for k in range(10)]
    with open_outcome_log(log_url) as log:
        assert isinstance(log, OutcomeLog)
        assert log.append(records) == 10
        assert log.append([]) == 0
        assert list(log.read()) == records
        assert list(log.read(since_time=T0 + 3, until_time=T0 + 7)) == records[3:7]  # [since, until)
        assert list(log.read(arms={"ranker": "treatment"})) == records[0::2]
        assert list(log.read(since_time=T0 + 4, arms={"ranker": "control"})) == [records[5], records[7], records[9]]
        assert list(log.read(arms={"other-layer": "x"})) == []
    with open_outcome_log(log_url) as reopened:  # another connection sees everything
        assert list(reopened.read()) == records


def test_reads_page_through_long_logs(log_url: str):
    records = [served(k, t=T0 + k // 3) for k in range(25)]  # equal times straddle page boundaries
    with open_outcome_log(log_url) as log:
        log.append(records)
        log.page_size = 4  # type: ignore[attr-defined]
        assert [r.request_id for r in log.read()] == [r.request_id for r in records]


def test_read_arguments_are_checked(log_url: str):
    with open_outcome_log(log_url) as log:
        with pytest.raises(ValueError, match="since_time 5 is after until_time 1"):
            log.read(since_time=5, until_time=1)
        with pytest.raises(TypeError, match="item 0 is dict"):
            log.append([{"request_id": "r"}])  # type: ignore[list-item]


# ----------------------------------------------------------------------------------------------- SQLite


def test_sqlite_ignores_a_request_id_it_already_holds(tmp_path: Path):
    with SqliteOutcomeLog(tmp_path / "served.db") as log:
        assert log.append([served(1), served(2)]) == 2
        assert log.append([served(2), served(3)]) == 1  # a retried batch: only the new record is written
        assert [r.request_id for r in log.read()] == ["r1", "r2", "r3"]


def test_sqlite_reader_in_another_process_sees_committed_records(tmp_path: Path):
    path = tmp_path / "served.db"
    with SqliteOutcomeLog(path) as log:  # stays open (WAL): the child reads while the writer holds it
        log.append([served(k) for k in range(5)])
        script = ("import json, sys; from seekrec.experiments.outcome_stores import open_outcome_log\n"
                  "log = open_outcome_log(sys.argv[1])\n"
                  f"print(json.dumps([r.request_id for r in log.read(since_time={T0 + 1})]))")
        out = subprocess.run([sys.executable, "-c", script, f"sqlite://{path}"], capture_output=True, text=True,
                             env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=60, check=True)
        assert json.loads(out.stdout) == ["r1", "r2", "r3", "r4"]
        log.append([served(9)])  # and the writer is not blocked by the reader having been there
        assert len(list(log.read())) == 6


def test_sqlite_refuses_the_event_log_file_and_vice_versa(tmp_path: Path):
    SqliteEventLog(tmp_path / "events.db").close()
    with pytest.raises(ValueError, match="not a seekrec outcome log.*not the event log's file"):
        SqliteOutcomeLog(tmp_path / "events.db")
    SqliteOutcomeLog(tmp_path / "served.db").close()
    with pytest.raises(ValueError, match="not a seekrec event log"):
        SqliteEventLog(tmp_path / "served.db")


def test_a_closed_log_says_so(tmp_path: Path):
    log = SqliteOutcomeLog(tmp_path / "served.db")
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.read()


# ------------------------------------------------------------------------------------------------ Redis


def test_redis_trims_the_stream_to_about_maxlen(redis_url: str, redis_prefix: str):
    with RedisOutcomeLog(redis_url, f"{redis_prefix}:served", maxlen=50) as log:
        for start in range(0, 1000, 100):
            log.append([served(k) for k in range(start, start + 100)])
        length = log._redis.xlen(log.stream)
        assert 50 <= length < 1000  # approximate (~) trimming removes whole nodes: cheap, not exact
        kept = list(log.read())
        assert len(kept) == length and kept[-1].request_id == "r999"


def test_redis_bounded_reads_scan_by_arrival_with_slack(redis_url: str, redis_prefix: str):
    now = time.time()
    with RedisOutcomeLog(redis_url, f"{redis_prefix}:served", slack_s=60) as log:
        log.append([served(1, t=now - 30), served(2, t=now - 1)])  # served 30 s before it reached Redis
        assert [r.request_id for r in log.read(since_time=now - 40, until_time=now - 20)] == ["r1"]
        assert [r.request_id for r in log.read(since_time=now - 5)] == ["r2"]


def test_redis_refuses_a_foreign_stream(redis_url: str, redis_prefix: str):
    with RedisOutcomeLog(redis_url, f"{redis_prefix}:served") as log:
        log._redis.xadd(log.stream, {"u": "u1"})
        with pytest.raises(ValueError, match="not written by an outcome log"):
            list(log.read())


def test_redis_url_options_reach_the_log(redis_url: str, redis_prefix: str):
    with open_outcome_log(f"{redis_url}?stream={redis_prefix}:x&maxlen=7&socket_timeout=2") as log:
        assert isinstance(log, RedisOutcomeLog)
        assert (log.stream, log.maxlen) == (f"{redis_prefix}:x", 7)


def test_an_unreachable_redis_is_named():
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'redis>=5,<7')")
    with pytest.raises(ConnectionError, match="cannot reach Redis at redis://127.0.0.1:1/0"):
        RedisOutcomeLog("redis://127.0.0.1:1/0", connect_timeout_s=0.5)


# ---------------------------------------------------------------------------------------------- factory


def test_factory_picks_the_backend_from_the_url(tmp_path: Path):
    with open_outcome_log(tmp_path / "a.db") as plain, open_outcome_log(f"sqlite://{tmp_path}/b.db?synchronous=FULL") as full:
        assert isinstance(plain, SqliteOutcomeLog) and isinstance(full, SqliteOutcomeLog)
        assert full.synchronous == "FULL"
    with pytest.raises(ValueError, match="unknown outcome log url scheme 'kafka'"):
        open_outcome_log("kafka://broker/served")
    with pytest.raises(ValueError, match="sqlite urls take only"):
        open_outcome_log(f"sqlite://{tmp_path}/c.db?stream=x")
    with pytest.raises(ValueError, match="maxlen must be a int, got 'many'"):
        open_outcome_log("redis://127.0.0.1:6379/0?maxlen=many")


# ------------------------------------------------------------------------------------ background writer


class SlowLog(OutcomeLog):
    """Appends take ``delay_s``; ``started`` is set when the first append begins."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.records: list[ServedList] = []
        self.started = threading.Event()

    def append(self, records: Sequence[ServedList]) -> int:
        self.started.set()
        time.sleep(self.delay_s)
        self.records.extend(records)
        return len(records)

    def read(self, since_time=None, until_time=None, arms=None):  # noqa: ANN001, ANN201  (not used here)
        return iter(list(self.records))

    def close(self) -> None:
        pass


class FlakyLog(SlowLog):
    """Fails the first ``failures`` appends with an outage."""

    def __init__(self, failures: int) -> None:
        super().__init__(0.0)
        self.failures = failures

    def append(self, records: Sequence[ServedList]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise OutcomeLogUnavailableError("storage down")
        return super().append(records)


def test_submit_never_blocks_on_a_slow_log_and_counts_what_it_drops():
    log, lost = SlowLog(delay_s=0.5), []
    writer = BackgroundWriter(log, max_queue=3, on_lost=lambda n, why: lost.append((n, why)))
    assert writer.submit(served(0))
    assert log.started.wait(5)  # the thread is now inside a 0.5 s append; the queue fills behind it
    accepted, slowest = [], 0.0
    for k in range(1, 11):
        start = time.perf_counter()
        accepted.append(writer.submit(served(k)))
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.05
    assert accepted == [True] * 3 + [False] * 7
    assert writer.dropped == 7 and lost == [(1, QUEUE_FULL)] * 7
    assert writer.flush(timeout=5)
    assert [r.request_id for r in log.records] == ["r0", "r1", "r2", "r3"]
    assert (writer.written, writer.failed, writer.pending) == (4, 0, 0)
    assert writer.close(timeout=5)
    assert not writer.submit(served(99)) and writer.dropped == 8 and lost[-1] == (1, CLOSED)


def test_outages_are_retried_and_a_lost_batch_is_counted_without_stopping_the_writer():
    log, lost = FlakyLog(failures=2), []
    with BackgroundWriter(log, max_retries=2, retry_delay_s=0.001, on_lost=lambda n, why: lost.append((n, why))) as writer:
        writer.submit(served(1))
        assert writer.flush(timeout=5)
        assert writer.written == 1 and lost == []  # two failures, third attempt wrote it
        log.failures = 3
        writer.submit(served(2))
        assert writer.flush(timeout=5)
        assert writer.failed == 1 and lost == [(1, WRITE_FAILED)]
        writer.submit(served(3))  # the thread survived
        assert writer.flush(timeout=5)
    assert [r.request_id for r in log.records] == ["r1", "r3"]


def test_close_writes_what_is_queued(tmp_path: Path):
    with SqliteOutcomeLog(tmp_path / "served.db") as log:
        writer = BackgroundWriter(log, batch_size=16)
        for k in range(200):
            assert writer.submit(served(k))
        assert writer.close(timeout=10)
        assert writer.written == 200 and len(list(log.read())) == 200


def test_writer_settings_are_checked():
    with pytest.raises(ValueError, match="max_queue must be an integer >= 1, got 0"):
        BackgroundWriter(SlowLog(0.0), max_queue=0)
    with pytest.raises(ValueError, match="retry_delay_s"):
        BackgroundWriter(SlowLog(0.0), retry_delay_s=-1.0)
