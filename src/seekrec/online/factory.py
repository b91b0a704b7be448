"""``open_event_log(url)``: the one place that turns a configured url into an ``EventLog`` backend.

Settings and the CLI carry a single string, so switching a deployment from the embedded log to Redis
is a configuration change, not a code change.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from seekrec.online.event_log import EventLog
from seekrec.online.sqlite_log import SqliteEventLog

SQLITE_SCHEMES = ("sqlite",)
REDIS_SCHEMES = ("redis", "rediss", "unix")
EVENT_LOG_SCHEMES = SQLITE_SCHEMES + REDIS_SCHEMES


def open_event_log(url: str | Path) -> EventLog:
    """Open the event log that ``url`` names.

    * ``sqlite:///abs/path/events.db`` (absolute: three slashes, like ``file://`` urls),
      ``sqlite://relative/events.db``, or a plain path without a scheme: ``SqliteEventLog``.
      Query option: ``?synchronous=FULL`` (default ``NORMAL``).
    * ``redis://[:password@]host:port/db``, ``rediss://...`` (TLS) or ``unix:///path/redis.sock``:
      ``RedisEventLog``. Query options ``?stream=<key>`` (default ``seekrec:events``) and
      ``?socket_timeout=<seconds>`` (every Redis call's timeout, default 5); the others go to the redis
      client.

    Unknown schemes raise ``ValueError`` listing the known ones.
    """
    text = str(url)
    if not text:
        raise ValueError("event log url is empty; pass a path or one of " + _schemes_help())
    if "://" not in text:
        return SqliteEventLog(text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in SQLITE_SCHEMES:
        return _open_sqlite(text)
    if scheme in REDIS_SCHEMES:
        return _open_redis(text)
    raise ValueError(f"unknown event log url scheme {scheme!r} in {text!r}; use one of " + _schemes_help())


def _schemes_help() -> str:
    return ", ".join(f"{scheme}://" for scheme in EVENT_LOG_SCHEMES) + " (or a plain file path for SQLite)"


def _open_sqlite(url: str) -> SqliteEventLog:
    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError(f"event log url {url!r} names no file; write sqlite:///abs/path/events.db")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} in {url!r}; sqlite urls take only ?synchronous=")
    return SqliteEventLog(path, options.get("synchronous", "NORMAL"))


def _open_redis(url: str) -> EventLog:
    # Imported here so that the redis package stays an optional dependency of the SQLite-only setup.
    try:
        from seekrec.online.redis_log import RedisEventLog
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{url.split('://', 1)[0]}:// event logs need the redis package: pip install 'redis>=5,<7'"
        ) from exc

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    streams = [value for key, value in query if key == "stream"]
    timeouts = [value for key, value in query if key == "socket_timeout"]
    own = ("stream", "socket_timeout")  # read here: the log cuts blocking reads into slices of its timeout
    client_url = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in own])))
    if len(streams) > 1 or len(timeouts) > 1:
        raise ValueError(f"event log url {url!r} names ?stream= or ?socket_timeout= more than once")
    options: dict[str, float] = {}
    if timeouts:
        try:
            options["timeout_s"] = float(timeouts[0])
        except ValueError as exc:
            raise ValueError(f"event log url {url!r}: socket_timeout must be seconds, got {timeouts[0]!r}") from exc
    return RedisEventLog(client_url, *streams, **options)
