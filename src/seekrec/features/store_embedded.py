"""In-process feature store backend: dicts and sorted lists, with atomic SQLite snapshots.

The default for one server process. ``snapshot`` writes the whole state (attributes, sequences,
window times and the applied offset) to a new SQLite file that replaces the old one in one rename,
so a crash mid-snapshot leaves the previous snapshot intact; ``restore`` reads it back, and the
event log tail after the recorded offset brings the store up to date.
"""

from __future__ import annotations

import bisect
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seekrec.features.rows import SIDES, check_side
from seekrec.features.store import EntityState, StoreLimits
from seekrec.io import atomic_path

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE attributes (side TEXT NOT NULL, id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (side, id));
CREATE TABLE history (user TEXT NOT NULL, pos INTEGER NOT NULL, item TEXT NOT NULL, ts REAL NOT NULL,
                      PRIMARY KEY (user, pos));
CREATE TABLE times (side TEXT NOT NULL, id TEXT NOT NULL, ts REAL NOT NULL);
"""


class EmbeddedBackend:
    """State in Python containers: attributes, per-user deques, per-entity sorted event times."""

    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self._attributes: dict[str, dict[str, dict[str, Any]]] = {side: {} for side in SIDES}
        self._history: dict[str, deque[tuple[str, float]]] = {}
        self._times: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
        self._offset = 0

    def put_attributes(self, side: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        table = self._attributes[check_side(side)]
        for key, record in records.items():
            table[key] = dict(record)

    def append(self, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float], offset: int,
               expected: int | None = None) -> bool:
        if expected is not None and expected != self._offset:
            return False
        latest: dict[tuple[str, str], float] = {}  # (side, id) -> newest time in this batch
        for user, item, ts in zip(users, items, timestamps):
            ts = float(ts)
            if self.limits.sequence_len:
                self._history.setdefault(user, deque(maxlen=self.limits.sequence_len)).append((item, ts))
            if self.limits.horizon_s:
                for side, key in (("user", user), ("item", item)):
                    bisect.insort(self._times[side].setdefault(key, []), ts)
                    latest[side, key] = max(ts, latest.get((side, key), ts))
        for (side, key), newest in latest.items():
            times = self._times[side][key]
            del times[: bisect.bisect_left(times, newest - self.limits.horizon_s)]
        self._offset = int(offset)
        return True

    def read(self, side: str, ids: Sequence[str], now: Sequence[float], windows_s: Sequence[int],
             history: bool, attributes: bool | Sequence[bool] = True) -> list[EntityState]:
        check_side(side)
        flags = [attributes] * len(ids) if isinstance(attributes, bool) else attributes
        out = []
        for key, t, with_attributes in zip(ids, now, flags):
            times = self._times[side].get(key, [])
            end = bisect.bisect_left(times, t)
            counts = tuple(end - bisect.bisect_left(times, t - w) for w in windows_s)
            past = tuple(self._history.get(key, ())) if history else ()
            out.append(EntityState(dict(self._attributes[side].get(key, {})) if with_attributes else {}, past, counts))
        return out

    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        """Nothing to release: the state lives in this process until it is garbage-collected."""

    def snapshot(self, path: str | Path) -> None:
        """Write the whole state to a SQLite file at ``path``, replacing it atomically."""
        with atomic_path(path) as tmp:
            connection = sqlite3.connect(tmp)
            try:
                connection.executescript(_SCHEMA)
                meta = {"format": SNAPSHOT_FORMAT, "offset": self._offset,
                        "sequence_len": self.limits.sequence_len, "horizon_s": self.limits.horizon_s}
                connection.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                connection.executemany("INSERT INTO attributes VALUES (?, ?, ?)", (
                    (side, key, json.dumps(record))
                    for side in SIDES for key, record in self._attributes[side].items()))
                connection.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", (
                    (user, pos, item, ts) for user, events in self._history.items()
                    for pos, (item, ts) in enumerate(events)))
                connection.executemany("INSERT INTO times VALUES (?, ?, ?)", (
                    (side, key, ts) for side in SIDES for key, times in self._times[side].items() for ts in times))
                connection.commit()
            finally:
                connection.close()

    @classmethod
    def restore(cls, path: str | Path, limits: StoreLimits) -> EmbeddedBackend:
        """A backend holding the state a snapshot recorded."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no feature store snapshot here; write one with FeatureStore.snapshot")
        backend = cls(limits)
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
            if int(meta.get("format", -1)) != SNAPSHOT_FORMAT:
                raise ValueError(f"{path}: snapshot format {meta.get('format')!r} is not {SNAPSHOT_FORMAT}; "
                                 "rebuild the store from the dataset and the event log")
            if int(meta["sequence_len"]) < limits.sequence_len or int(meta["horizon_s"]) < limits.horizon_s:
                logger.warning("%s kept sequences of %s and %s s of event times, less than the spec needs (%s): "
                               "features are short until new events fill them", path, meta["sequence_len"],
                               meta["horizon_s"], limits)
            backend._offset = int(meta["offset"])
            for side, key, record in connection.execute("SELECT side, id, record FROM attributes"):
                backend._attributes[side][key] = json.loads(record)
            if limits.sequence_len:
                for user, item, ts in connection.execute("SELECT user, item, ts FROM history ORDER BY user, pos"):
                    backend._history.setdefault(user, deque(maxlen=limits.sequence_len)).append((item, ts))
            if limits.horizon_s:
                for side, key, ts in connection.execute("SELECT side, id, ts FROM times ORDER BY side, id, ts"):
                    backend._times[side].setdefault(key, []).append(ts)
        finally:
            connection.close()
        return backend
