"""The request log: one JSON line per ``POST /recommend`` (request and response), written off the request path.

``POST /recommend`` only puts a ``RequestRecord`` into the bounded queue of a ``BackgroundWriter`` (the
outcome log's writer, reused) and returns; a daemon thread appends the queued lines to the file in
batches. When the disk is slow the queue fills and records past its bound are dropped and counted
(``seekrec_request_log_records_lost_total{reason}``), never waited for. The file is opened for
appending, so a restarted server adds to it; rotate it with ``copytruncate``-style tools or by moving it
(the writer reopens a moved file on its next batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from seekrec.experiments.outcomes import BackgroundWriter


@dataclass(frozen=True)
class RequestRecord:
    """One answered ``/recommend``: what was asked, what was answered and how (``cache``: hit, miss or bypass;
    None with the response cache off)."""

    time: float  # unix seconds
    request_id: str
    user_id: str
    k: int
    exclude_seen: bool
    min_offset: int | None
    arm: str
    arms: dict[str, str]
    model_version: str
    items: tuple[str, ...]
    scores: tuple[float, ...]
    fallback: bool
    latency_ms: float
    cache: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)


class JsonlFile:
    """Appends records as lines to ``path`` (a ``RecordSink``); written by the writer thread only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._inode = os.fstat(self._file.fileno()).st_ino

    def append(self, records: Sequence[Any]) -> int:
        if not self.path.exists() or os.stat(self.path).st_ino != self._inode:  # moved away (rotated): start anew
            self._file.close()
            self._file = self.path.open("a", encoding="utf-8")
            self._inode = os.fstat(self._file.fileno()).st_ino
        self._file.write("".join(r.to_json() + "\n" for r in records))
        self._file.flush()
        return len(records)

    def close(self) -> None:
        self._file.close()

    def __repr__(self) -> str:
        return f"JsonlFile({str(self.path)!r})"


class RequestLog:
    """The request log of one server: ``submit`` never waits; ``close`` writes what is queued."""

    def __init__(self, path: Path, max_queue: int, registry: CollectorRegistry | None = None, *,
                 batch_size: int = 500) -> None:
        self.lost = Counter("seekrec_request_log_records_lost", "Request-log records not written, by reason "
                            "(queue_full, write_failed, closed)", ["reason"],
                            registry=registry if registry is not None else CollectorRegistry())
        self.file = JsonlFile(path)
        self.writer: BackgroundWriter[RequestRecord] = BackgroundWriter(
            self.file, max_queue, batch_size=batch_size, record_type=RequestRecord, name="request-log-writer",
            on_lost=lambda count, reason: self.lost.labels(reason=reason).inc(count))

    def submit(self, record: RequestRecord) -> bool:
        """Queue ``record``; False (dropped and counted) when the queue is full."""
        return self.writer.submit(record)

    def close(self, timeout: float = 10.0) -> bool:
        done = self.writer.close(timeout)
        self.file.close()
        return done
