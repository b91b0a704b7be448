"""SQLite-only behaviour: WAL and synchronous settings, and refusing files that are not event logs."""

from __future__ import annotations

import sqlite3

import pytest

from seekrec.online.event_log import Event, EventLogUnavailableError
from seekrec.online.sqlite_log import SqliteEventLog


@pytest.mark.parametrize("mode", ["NORMAL", "FULL", "full"])
def test_the_file_is_in_wal_mode_with_the_requested_synchronous_level(tmp_path, mode):
    path = tmp_path / "nested" / "events.db"  # parent folders are created
    with SqliteEventLog(path, synchronous=mode) as log:
        assert log.synchronous == mode.upper()
        assert log.append([Event("u", "i", 1.0)]) == [1]
        level = log._connection().execute("PRAGMA synchronous").fetchone()[0]
        assert level == {"NORMAL": 1, "FULL": 2}[mode.upper()]
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # WAL persists in the file
        assert other.execute("SELECT user_id FROM events WHERE event_offset = 1").fetchone() == ("u",)
    finally:
        other.close()


def test_bad_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="synchronous must be one of"):
        SqliteEventLog(tmp_path / "a.db", synchronous="OFF")
    with pytest.raises(ValueError, match="poll_interval_s"):
        SqliteEventLog(tmp_path / "a.db", poll_interval_s=0)
    with pytest.raises(ValueError, match="busy_timeout_ms"):
        SqliteEventLog(tmp_path / "a.db", busy_timeout_ms=-1)


def test_a_file_that_is_not_a_sqlite_database_is_refused_with_its_path(tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(ValueError, match="notes.db.*not a SQLite event log"):
        SqliteEventLog(path)


def test_another_applications_database_is_refused(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(ValueError, match="app.db is not a seekrec event log.*users"):
        SqliteEventLog(path)


def test_a_locked_database_raises_unavailable_not_a_bare_operational_error(tmp_path):

    path = tmp_path / "events.db"
    with SqliteEventLog(path, busy_timeout_ms=50) as log:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock for too long
        try:
            with pytest.raises(EventLogUnavailableError, match="database is locked"):
                log.append([Event("u", "i", 1.0)])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert log.append([Event("u", "i", 1.0)]) == [1]


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_log_is_upgraded_in_place_keeping_its_events(tmp_path, version):
    """Schema 1 had no idempotency table, schemas 1 and 2 no request ids."""
    path = tmp_path / "events.db"
    with SqliteEventLog(path) as log:
        log.append([Event("u", "i", 1.0)])
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE events DROP COLUMN request_id")
    if version == 1:
        conn.execute("DROP TABLE idempotency")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    with SqliteEventLog(path) as log:
        assert log.end_offset() == 1 and log.read(0)[0].request_id is None
        assert log.append([Event("u", "j", 2.0, request_id="r1")], idempotency_key="k") == [2]
        assert [e.request_id for e in log.read(0)] == [None, "r1"]
