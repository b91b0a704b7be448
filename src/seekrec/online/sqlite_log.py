"""The embedded event log: one SQLite file in WAL mode, shared by a serving and a training process.

Why SQLite: it ships with Python, a single file is easy to back up next to the model registry, WAL
mode lets one process append while another reads without blocking it, and a committed transaction is
durable by construction. It sustains thousands of small appends a second, plenty for one server.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

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
from seekrec.online.sqlite_wal import (
    check_synchronous,
    connect_wal,
    storage_errors_as,
    write_transaction,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # stored in PRAGMA user_version; bump it when the tables change (2: idempotency keys,
# 3: the request id an event answers)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
        event_offset INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        timestamp REAL NOT NULL,
        event_type TEXT NOT NULL,
        value REAL NOT NULL,
        request_id TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS consumers (consumer TEXT PRIMARY KEY, committed INTEGER NOT NULL)",
)
# version 2: idempotency keys of recent batches (pruned past the window at each keyed append)
_SCHEMA_2 = (
    """CREATE TABLE IF NOT EXISTS idempotency (
        key TEXT PRIMARY KEY,
        first_offset INTEGER NOT NULL,
        count INTEGER NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created)",
)
# version 3: the request id an event answers (NULL for events that carry none, and for older events)
_SCHEMA_3 = ("ALTER TABLE events ADD COLUMN request_id TEXT",)


_unavailable_on_storage_errors = storage_errors_as(EventLogUnavailableError, "event log")
_SELECT = (
    "SELECT event_offset, user_id, item_id, timestamp, event_type, value, request_id FROM events "
    "WHERE event_offset > ? ORDER BY event_offset LIMIT ?"
)


class SqliteEventLog(EventLog):
    """An ``EventLog`` in one SQLite file (WAL mode); safe across threads and processes.

    Durability. In WAL mode a commit appends the transaction to the ``-wal`` file with ``write(2)``;
    the main database file only changes at checkpoints, and readers recover the WAL on open.

    * ``synchronous="NORMAL"`` (default) does not ``fsync`` the WAL at each commit, only at
      checkpoints. When ``append`` returns, the batch is in the kernel's page cache, which outlives
      the process: a crashed, killed (SIGKILL, OOM) or aborted server loses no acknowledged event,
      and the next opener replays the WAL. A power cut or kernel panic may drop the last few
      commits (the database stays consistent, never corrupt).
    * ``synchronous="FULL"`` also calls ``fsync`` on the WAL before each commit returns, so an
      acknowledged batch survives power loss too, at the price of one disk flush per ``append``:
      append in batches when using it.

    Concurrency. Offsets are allocated inside a ``BEGIN IMMEDIATE`` transaction (the SQLite write
    lock), so appenders in several threads and processes get unique, gap-free offsets. One connection
    per instance is guarded by a lock: simpler than a connection per thread, which would leak when
    threads end, and SQLite serialises writers anyway. Other processes wait up to ``busy_timeout_ms``
    for the write lock instead of failing with "database is locked".

    Blocking reads poll: SQLite has no change notification across processes, so ``read`` with
    ``block_ms > 0`` re-runs its indexed query every ``poll_interval_s`` (10 ms by default) until
    events arrive or the time is up, releasing the lock between polls so this instance's appenders
    are never held up by a waiting reader.
    """

    def __init__(
        self,
        path: str | Path,
        synchronous: str = "NORMAL",
        *,
        busy_timeout_ms: int = 10_000,
        poll_interval_s: float = 0.01,
        idempotency_window_s: float = IDEMPOTENCY_WINDOW_S,
    ) -> None:
        mode = check_synchronous(synchronous)
        if busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be >= 0, got {busy_timeout_ms}")
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0 seconds, got {poll_interval_s}")
        self.path = Path(path)
        self.synchronous = mode
        self.poll_interval_s = poll_interval_s
        self.idempotency_window_s = idempotency_window_s
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = connect_wal(self.path, busy_timeout_ms, mode, "event log")
        try:
            self._setup(self._conn)
        except BaseException:
            self.close()
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        with write_transaction(conn):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables - {"events", "consumers"}:
                for statement in _SCHEMA + _SCHEMA_2:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version in (1, 2):  # an older log: add what it lacks (idempotency keys, request ids)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
                for statement in (_SCHEMA_2 if version == 1 else ()) + (() if "request_id" in columns else _SCHEMA_3):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} is not a seekrec event log of schema version {SCHEMA_VERSION} "
                    f"(user_version={version}, tables={sorted(tables)}); pass another path"
                )
        logger.debug("opened event log %s (synchronous=%s)", self.path, self.synchronous)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the event log {self.path} is closed; open a new SqliteEventLog")
        return self._conn

    @_unavailable_on_storage_errors
    def append(self, events: Sequence[Event], idempotency_key: str | None = None) -> list[int]:
        """Append a batch in one transaction and return its offsets; durable when it returns. The
        idempotency key is stored in the same transaction, so a batch and its key land together."""
        batch = check_batch(events)
        check_idempotency_key(idempotency_key)
        if not batch:
            return []
        with self._lock:
            conn = self._connection()
            with write_transaction(conn):
                if idempotency_key is not None:
                    now = time.time()
                    conn.execute("DELETE FROM idempotency WHERE created < ?", (now - self.idempotency_window_s,))
                    row = conn.execute("SELECT first_offset, count FROM idempotency WHERE key = ?",
                                       (idempotency_key,)).fetchone()
                    if row is not None:
                        return check_replay(idempotency_key, list(range(row[0], row[0] + row[1])), len(batch))
                # Offsets are allocated explicitly (max + 1 ...) under the write lock rather than
                # left to rowid allocation, so they are gap-free and known without a read-back.
                (end,) = conn.execute("SELECT COALESCE(MAX(event_offset), 0) FROM events").fetchone()
                offsets = list(range(end + 1, end + 1 + len(batch)))
                conn.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (offset, e.user_id, e.item_id, e.timestamp, e.event_type, e.value, e.request_id)
                        for offset, e in zip(offsets, batch)
                    ],
                )
                if idempotency_key is not None:
                    conn.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?)",
                                 (idempotency_key, offsets[0], len(offsets), now))
        return offsets

    @_unavailable_on_storage_errors
    def read(self, after: int, limit: int = 1000, block_ms: int = 0) -> list[LoggedEvent]:
        """Events with offset > ``after`` (at most ``limit``); polls up to ``block_ms`` if none yet."""
        check_read_args(after, limit, block_ms)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            with self._lock:
                rows = self._connection().execute(_SELECT, (after, limit)).fetchall()
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return [
                    LoggedEvent(user, item, ts, kind, value, request, offset=offset)
                    for offset, user, item, ts, kind, value, request in rows
                ]
            time.sleep(min(self.poll_interval_s, remaining))

    @_unavailable_on_storage_errors
    def commit(self, consumer: str, offset: int) -> None:
        """Record the consumer's position; raises ``ValueError`` going backwards or past the end."""
        check_consumer(consumer)
        check_offset(offset)
        with self._lock:
            conn = self._connection()
            with write_transaction(conn):
                row = conn.execute("SELECT committed FROM consumers WHERE consumer = ?", (consumer,)).fetchone()
                (end,) = conn.execute("SELECT COALESCE(MAX(event_offset), 0) FROM events").fetchone()
                check_commit(consumer, offset, 0 if row is None else row[0], end)
                conn.execute(
                    "INSERT INTO consumers VALUES (?, ?) "
                    "ON CONFLICT(consumer) DO UPDATE SET committed = excluded.committed",
                    (consumer, offset),
                )

    @_unavailable_on_storage_errors
    def committed(self, consumer: str) -> int:
        check_consumer(consumer)
        with self._lock:
            row = self._connection().execute(
                "SELECT committed FROM consumers WHERE consumer = ?", (consumer,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    @_unavailable_on_storage_errors
    def end_offset(self) -> int:
        with self._lock:
            (end,) = self._connection().execute("SELECT COALESCE(MAX(event_offset), 0) FROM events").fetchone()
        return int(end)

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise ``RuntimeError``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteEventLog({str(self.path)!r}, synchronous={self.synchronous!r})"
