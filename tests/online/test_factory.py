"""open_event_log: url schemes to backends, options, and errors that list what is accepted."""

from __future__ import annotations

import pytest

from seekrec.online.factory import open_event_log
from seekrec.online.sqlite_log import SqliteEventLog


def test_plain_paths_and_sqlite_urls_open_sqlite(tmp_path, monkeypatch):
    with open_event_log(tmp_path / "a.db") as log:
        assert isinstance(log, SqliteEventLog) and log.path == tmp_path / "a.db"
    with open_event_log(f"sqlite://{tmp_path}/b.db?synchronous=FULL") as log:
        assert isinstance(log, SqliteEventLog) and log.path == tmp_path / "b.db" and log.synchronous == "FULL"
    monkeypatch.chdir(tmp_path)
    with open_event_log("sqlite://rel/c.db") as log:
        assert log.path.resolve() == tmp_path / "rel" / "c.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://broker:9092/events", r"unknown event log url scheme 'kafka'.*sqlite://, redis://"),
        ("sqlite://", "names no file"),
        ("sqlite:///tmp/x.db?sync=FULL", r"unknown option\(s\) \['sync'\]"),
        ("", "empty"),
    ],
)
def test_bad_urls_raise_value_errors_that_say_what_is_accepted(url, message):
    with pytest.raises(ValueError, match=message):
        open_event_log(url)


def test_redis_urls_open_redis_with_the_stream_option(redis_url, redis_prefix):
    from seekrec.online.redis_log import RedisEventLog

    with open_event_log(f"{redis_url}?stream={redis_prefix}:s&socket_timeout=30") as log:
        assert isinstance(log, RedisEventLog) and log.stream == f"{redis_prefix}:s"
        assert log.end_offset() == 0
    with open_event_log(redis_url) as log:
        assert isinstance(log, RedisEventLog) and log.stream == "seekrec:events"
    with pytest.raises(ValueError, match="more than once"):
        open_event_log(f"{redis_url}?stream=a&stream=b")
