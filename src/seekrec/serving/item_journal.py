"""The item journal: items added with ``POST /items`` survive a restart.

Model versions are immutable, so an item added by content lives only in the running predictor; the
journal (one JSON line per accepted request, fsynced before the response) is replayed into every
version the server installs, at start-up and on hot swaps. A line cut short by a crash mid-write was
never acknowledged, so it is skipped with a warning (the next append starts a fresh line).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ItemJournal:
    """Append-only JSON lines of ``{"items": {raw id: {title, genres, ...}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, records: dict[str, dict[str, Any]]) -> None:
        """Write and fsync one line; raises ``OSError`` (disk full ...) before the client is answered."""
        line = json.dumps({"items": records}, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = "\n" + line  # end a line cut short by a crash, so it stays the only bad one
                data = line.encode("utf-8")
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes); disk full?")
                os.fsync(fd)
            finally:
                os.close(fd)

    def signature(self) -> tuple[int, int, int] | None:
        """``(inode, size, mtime ns)`` of the journal, ``None`` when there is none: replicas sharing the
        registry compare it each poll and re-read the journal only when another replica appended."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def load(self) -> dict[str, dict[str, Any]]:
        """Every journaled item, the latest record of an id winning; ``{}`` when there is no journal."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        items: dict[str, dict[str, Any]] = {}
        for number, line in enumerate(text.split("\n"), start=1):
            if not line:
                continue
            try:
                items.update(json.loads(line)["items"])
            except (ValueError, KeyError, TypeError) as exc:
                # acknowledged lines were fsynced whole, so a bad one is a write cut short by a crash
                log.warning("%s, line %d: skipping a record cut short by a crash (%s)", self.path, number, exc)
        return items
