"""The outcome log's two stores: one SQLite file (WAL, the default) or a Redis Stream, chosen by url like the event
log (``open_outcome_log``); ``outcome_log_beside`` names the one a server keeps next to its event log."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from seekrec.experiments.outcomes import (
    APPLICATION_ID,
    DEFAULT_MAXLEN,
    DEFAULT_STREAM,
    OutcomeLog,
    OutcomeLogUnavailableError,
    ServedList,
    _check_arms,
    _check_range,
    _check_records,
    _selected,
)
from seekrec.online.factory import REDIS_SCHEMES, SQLITE_SCHEMES
from seekrec.online.sqlite_wal import check_synchronous, connect_wal, storage_errors_as, write_transaction

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)
_P = ParamSpec("_P")
_R = TypeVar("_R")


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS served (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        time REAL NOT NULL,
        arms TEXT NOT NULL,
        version TEXT NOT NULL,
        items TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        fallback INTEGER NOT NULL,
        teams TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS served_time ON served (time)",
)
_COLUMNS = "request_id, user_id, time, arms, version, items, latency_ms, fallback, teams"
# keyset pagination on (time, seq): each page is an index range scan, never an OFFSET re-scan
_PAGE = (f"SELECT seq, {_COLUMNS} FROM served WHERE time >= ? AND time < ? AND (time > ? OR (time = ? AND seq > ?)) "
         "ORDER BY time, seq LIMIT ?")


_sqlite_unavailable = storage_errors_as(OutcomeLogUnavailableError, "outcome log")


class SqliteOutcomeLog(OutcomeLog):
    """An ``OutcomeLog`` in one SQLite file (WAL mode, table ``served``), shared by a server that writes
    and report jobs in other processes that read without blocking it.

    ``synchronous`` is as for ``SqliteEventLog``: ``NORMAL`` survives a killed process, ``FULL`` also a
    power cut. One connection per instance, guarded by a lock; ``read`` holds the lock for one page at
    a time, so a long report never stalls the writer thread for longer than a page.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL", *, busy_timeout_ms: int = 10_000,
                 page_size: int = 1000) -> None:
        mode = check_synchronous(synchronous)
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ValueError(f"busy_timeout_ms must be an integer >= 0, got {busy_timeout_ms!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an integer >= 1, got {page_size!r}")
        self.path = Path(path)
        self.synchronous = mode
        self.page_size = page_size
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = connect_wal(self.path, busy_timeout_ms, mode, "outcome log")
        try:
            self._setup(self._conn)
        except BaseException:
            self.close()
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        with write_transaction(conn):
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if app_id == 0 and not tables:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            elif app_id != APPLICATION_ID or tables != {"served"}:
                raise ValueError(f"{self.path} is not a seekrec outcome log (application_id={app_id}, "
                                 f"tables={sorted(tables)}); pass another path (not the event log's file)")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"the outcome log {self.path} is closed; open a new SqliteOutcomeLog")
        return self._conn

    @_sqlite_unavailable
    def append(self, records: Sequence[ServedList]) -> int:
        """Insert a batch in one transaction; request ids already stored are skipped (retries are safe)."""
        batch = _check_records(records)
        if not batch:
            return 0
        rows = [(r.request_id, r.user_id, r.time, json.dumps(r.arms, ensure_ascii=False), r.version,
                 json.dumps(list(r.items), ensure_ascii=False), r.latency_ms, int(r.fallback),
                 None if r.teams is None else json.dumps(list(r.teams))) for r in batch]
        with self._lock:
            conn = self._connection()
            before = conn.total_changes
            with write_transaction(conn):
                conn.executemany(f"INSERT OR IGNORE INTO served ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return conn.total_changes - before

    def read(self, since_time: float | None = None, until_time: float | None = None,
             arms: Mapping[str, str] | None = None) -> Iterator[ServedList]:
        """Served lists in ``[since_time, until_time)`` by time (then write order) whose arms match."""
        lo, hi = _check_range(since_time, until_time)
        wanted = _check_arms(arms)
        self._connection()  # a closed log fails here, not at the first ``next``
        return self._pages(lo, hi, wanted)

    def _pages(self, lo: float, hi: float, arms: dict[str, str]) -> Iterator[ServedList]:
        last_time, last_seq = lo, -1
        while True:
            rows = self._page(lo, hi, last_time, last_seq)
            for seq, request_id, user, t, arms_json, version, items, latency, fallback, teams in rows:
                record = ServedList(request_id, user, t, json.loads(arms_json), version, json.loads(items),
                                    latency, bool(fallback), None if teams is None else json.loads(teams))
                if _selected(record, lo, hi, arms):
                    yield record
            if len(rows) < self.page_size:
                return
            last_time, last_seq = rows[-1][3], rows[-1][0]

    @_sqlite_unavailable
    def _page(self, lo: float, hi: float, last_time: float, last_seq: int) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(_PAGE, (lo, hi, last_time, last_time, last_seq,
                                                      self.page_size)).fetchall()

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise ``RuntimeError``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqliteOutcomeLog({str(self.path)!r}, synchronous={self.synchronous!r})"


# --------------------------------------------------------------------------------------------- Redis


class RedisOutcomeLog(OutcomeLog):
    """An ``OutcomeLog`` on a Redis Stream (default ``seekrec:served``), one entry per served list
    holding its JSON in field ``r``; ``XADD ... MAXLEN ~ maxlen`` keeps the stream bounded (0: never trim).

    Entry ids are Redis' own (its clock at the write), not the served time: replicas with slightly
    different clocks and a writer queue that delivers late would otherwise collide with the stream's
    increasing-id rule. ``read`` therefore scans entry ids from ``since_time - slack_s`` to
    ``until_time + slack_s`` and filters on the records' own ``time``; a record that reached Redis more
    than ``slack_s`` after it was served (or a clock off by more) is outside a bounded read.
    Trimming drops the oldest lists: for experiments longer than the stream holds, use SQLite.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", stream: str = DEFAULT_STREAM, *,
                 maxlen: int = DEFAULT_MAXLEN, timeout_s: float = 5.0, connect_timeout_s: float = 5.0,
                 slack_s: float = 300.0, page_size: int = 1000) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            from seekrec.online.redis_log import MIN_REDIS_VERSION, redact
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError("Redis outcome logs need the redis package: pip install 'redis>=5,<7'") from exc
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"stream must be a non-empty key name, got {stream!r}")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0:
            raise ValueError(f"maxlen must be an integer >= 0 (0: never trim), got {maxlen!r}")
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError(f"timeout_s and connect_timeout_s must be > 0 seconds, got {timeout_s}, {connect_timeout_s}")
        if not slack_s >= 0 or not math.isfinite(slack_s):
            raise ValueError(f"slack_s must be finite seconds >= 0, got {slack_s}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an integer >= 1, got {page_size!r}")
        self.url = redact(url)
        self.stream = stream
        self.maxlen = maxlen
        self.slack_s = slack_s
        self.page_size = page_size
        self._errors = redis.exceptions
        # a socket timeout on every call and no automatic retries, as in RedisEventLog: the background
        # writer decides about retries, and a stuck Redis must not hang it forever
        self._redis: redis.Redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0))
        try:
            version_text = str(self._redis.info("server")["redis_version"])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._redis.close()
            raise ConnectionError(f"cannot reach Redis at {self.url}: {exc}. Start one "
                                  "(redis-server --daemonize yes --port 6379) or pass another url") from exc
        if tuple(int(part) for part in version_text.split(".")[:2]) < MIN_REDIS_VERSION:
            self._redis.close()
            raise RuntimeError(f"Redis at {self.url} is {version_text}; the outcome log needs >= 6.2")
        self._closed = False

    def _client(self) -> redis.Redis:
        if self._closed:
            raise RuntimeError(f"the outcome log {self.stream!r} at {self.url} is closed; open a new RedisOutcomeLog")
        return self._redis

    def _call(self, call: Callable[[], _R]) -> _R:
        """Run one Redis round trip, turning an outage into ``OutcomeLogUnavailableError``."""
        from seekrec.online.redis_log import _outage  # the event log's rule for "Redis cannot serve now"

        try:
            return call()
        except self._errors.RedisError as exc:
            if _outage(self, exc) is None:
                raise
            raise OutcomeLogUnavailableError(f"outcome log {self!r} is unavailable: {exc}") from exc

    def append(self, records: Sequence[ServedList]) -> int:
        """XADD the batch in one pipelined round trip, trimming the stream to about ``maxlen``."""
        batch = _check_records(records)
        if not batch:
            return 0
        pipe = self._client().pipeline(transaction=False)
        for record in batch:
            pipe.xadd(self.stream, {"r": record.to_json()}, maxlen=self.maxlen or None, approximate=True)
        self._call(pipe.execute)
        return len(batch)

    def read(self, since_time: float | None = None, until_time: float | None = None,
             arms: Mapping[str, str] | None = None) -> Iterator[ServedList]:
        """Served lists in ``[since_time, until_time)`` in stream order whose arms match."""
        lo, hi = _check_range(since_time, until_time)
        wanted = _check_arms(arms)
        self._client()
        first = "-" if lo == -math.inf else str(max(0, math.floor((lo - self.slack_s) * 1000)))
        last = "+" if hi == math.inf else str(max(0, math.ceil((hi + self.slack_s) * 1000)))
        return self._pages(first, last, lo, hi, wanted)

    def _pages(self, first: str, last: str, lo: float, hi: float, arms: dict[str, str]) -> Iterator[ServedList]:
        start = first
        while True:
            entries: list[tuple[str, dict[str, str]]] = self._call(
                lambda: self._client().xrange(self.stream, min=start, max=last, count=self.page_size))
            for entry_id, fields in entries:
                if set(fields) != {"r"}:
                    raise ValueError(f"stream {self.stream!r} holds entry {entry_id} not written by an outcome log "
                                     f"(fields {sorted(fields)}); use another stream name")
                record = ServedList.from_json(fields["r"])
                if _selected(record, lo, hi, arms):
                    yield record
            if len(entries) < self.page_size:
                return
            start = f"({entries[-1][0]}"

    def close(self) -> None:
        """Close the connection pool (idempotent); the stream stays in Redis."""
        if not self._closed:
            self._closed = True
            self._redis.close()

    def __repr__(self) -> str:
        return f"RedisOutcomeLog({self.url!r}, stream={self.stream!r})"


# ------------------------------------------------------------------------------------------- factory


def outcome_log_beside(event_log: str) -> str:
    """The outcome log a server keeps by default next to its event log: ``<name>-served.db`` beside a SQLite
    event log; on a Redis event log's server, ``<its stream>:served`` (``seekrec:served`` for the default stream;
    the other options kept)."""
    text = str(event_log)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in REDIS_SCHEMES:  # the event stream's name + ":served", so two event logs never share one
        parts = urlsplit(text)
        query = [(k, f"{v}:served" if k == "stream" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        return urlunsplit(parts._replace(query=urlencode(query)))
    prefix, path = (text.split("://", 1)[0] + "://", text.split("://", 1)[1]) if scheme else ("", text)
    path, _, query = path.partition("?")
    served = Path(path)
    served = served.with_name(f"{served.stem}-served{served.suffix or '.db'}")
    return f"{prefix}{served}{'?' + query if query else ''}"


def open_outcome_log(url: str | Path) -> OutcomeLog:
    """Open the outcome log that ``url`` names, like ``open_event_log``:

    * a plain path, ``sqlite:///abs/path/served.db`` or ``sqlite://relative/served.db``:
      ``SqliteOutcomeLog`` (query option ``?synchronous=FULL``, default ``NORMAL``). Use a file of its
      own, not the event log's.
    * ``redis://[:password@]host:port/db``, ``rediss://...`` or ``unix:///path/redis.sock``:
      ``RedisOutcomeLog``; query options ``?stream=`` (default ``seekrec:served``), ``?maxlen=``
      (approximate trimming, default 1,000,000; 0 = never) and ``?socket_timeout=`` (seconds, default 5);
      other options go to the redis client.
    """
    text = str(url)
    if not text:
        raise ValueError("outcome log url is empty; pass a path, sqlite:///abs/path/served.db or redis://host:port/db")
    if "://" not in text:
        return SqliteOutcomeLog(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in SQLITE_SCHEMES:
        path, _, query = text.split("://", 1)[1].partition("?")
        if not path:
            raise ValueError(f"outcome log url {text!r} names no file; write sqlite:///abs/path/served.db")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        if set(options) - {"synchronous"}:
            raise ValueError(f"unknown option(s) {sorted(set(options) - {'synchronous'})} in {text!r}; "
                             "sqlite urls take only ?synchronous=")
        return SqliteOutcomeLog(path, options.get("synchronous", "NORMAL"))
    if scheme in REDIS_SCHEMES:
        return _open_redis(text)
    schemes = ", ".join(f"{s}://" for s in SQLITE_SCHEMES + REDIS_SCHEMES)
    raise ValueError(f"unknown outcome log url scheme {scheme!r} in {text!r}; use one of {schemes} or a plain path")


def _open_redis(url: str) -> RedisOutcomeLog:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {"stream": str, "maxlen": int, "socket_timeout": float}
    options: dict[str, Any] = {}
    for key, kind in own.items():
        values = [value for k, value in query if k == key]
        if len(values) > 1:
            raise ValueError(f"outcome log url {url!r} names ?{key}= more than once")
        if values:
            try:
                options[key] = kind(values[0])
            except ValueError as exc:
                raise ValueError(f"outcome log url {url!r}: {key} must be a {kind.__name__}, got {values[0]!r}") from exc
    client_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in own])))
    return RedisOutcomeLog(client_url, options.get("stream", DEFAULT_STREAM),
                           maxlen=options.get("maxlen", DEFAULT_MAXLEN), timeout_s=options.get("socket_timeout", 5.0))


# ------------------------------------------------------------------------------------ off the request path
