"""What every seekrec SQLite log shares (the event log, the outcome log): one WAL-mode connection, write
transactions that take the write lock up front, and SQLite's transient failures turned into an
"unavailable" error the server answers with 503 + Retry-After."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

SYNCHRONOUS_MODES = ("NORMAL", "FULL")
# SQLITE_BUSY, LOCKED, NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL (primary codes; extended codes are masked):
# busy past the busy timeout, out of memory, I/O error, disk full, cannot open, lock protocol
TRANSIENT_CODES = {5, 6, 7, 10, 13, 14, 15}
_P = ParamSpec("_P")
_R = TypeVar("_R")


def check_synchronous(synchronous: str) -> str:
    """``synchronous`` upper-cased; ValueError unless it is one of ``SYNCHRONOUS_MODES``."""
    mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    return mode


def storage_errors_as(error: type[Exception], kind: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator: SQLite's transient failures (locked past the busy timeout, disk full, I/O errors) raise
    ``error`` naming the ``kind`` of log; other errors (a bug, a corrupt file) pass through unchanged."""

    def decorate(method: Callable[_P, _R]) -> Callable[_P, _R]:
        @wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return method(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                if code is not None and code & 0xFF in TRANSIENT_CODES:
                    raise error(f"{kind} {args[0]!r} is unavailable: {exc}") from exc
                raise

        return wrapper

    return decorate


def connect_wal(path: Path, busy_timeout_ms: int, synchronous: str, kind: str) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode (readers never block the writer) with the busy timeout and
    ``synchronous`` set; ``kind`` ("event log", ...) names the file in errors. Closed again on failure."""
    try:
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE (write_transaction)
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise OSError(f"cannot open the {kind} {path}: {exc}") from exc
    try:
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a SQLite {kind}: {exc}") from exc
        if str(journal).lower() != "wal":
            raise OSError(f"{path}: SQLite refused WAL mode (journal_mode={journal}); put the {kind} on a local "
                          "filesystem (WAL needs shared memory, which network filesystems lack)")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so the reads inside (the current
    end, a committed position) cannot be invalidated by another writer."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
