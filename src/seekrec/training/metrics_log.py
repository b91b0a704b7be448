"""Append-only JSONL training log that survives restarts without duplicating steps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from seekrec.io import atomic_write_bytes, read_jsonl


class MetricsLog:
    """One JSON object per line: ``{"kind": "train"|"valid"|"test", "step": ..., ...}``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (they will be produced again on resume)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def clear(self) -> None:
        """Start an empty log (a fresh run in a directory that holds no checkpoint)."""
        atomic_write_bytes(self.path, b"")
