"""Hot items: the static attributes of the most popular items kept in this process, in front of a remote store.

A pipeline ranks its candidates with their feature rows, read from the feature store per request: with a
shared Redis store that is, per candidate, the item's attributes (a hash: title, genres, ... decoded from
JSON) and one count per window. Candidates are mostly the popular items, whose attributes never change
except through ``put_attributes`` (a new or edited item). ``HotItemAttributes`` wraps a ``StoreBackend``:
the attributes of the ``hot`` ids are read once and then served from memory, while their window counts
(which move with every event and with the clock) are still read from the backend in the same single
round trip, so the rows are exactly the backend's. ``put_attributes`` through this wrapper drops the
entries it replaces; every server applies ``POST /items`` records to its own store object (directly, or
from the items journal), so a replica's copy follows an item edited on another.

An embedded store already holds everything in process memory: there the wrapper would only add work, and
the server does not install it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from seekrec.features.store import EntityState, StoreBackend

HIT, MISS = "hit", "miss"


class HotItemAttributes:
    """A ``StoreBackend`` that keeps the attributes of ``hot`` item ids in memory once read.

    ``on_lookup(result, count)`` (``result``: ``"hit"`` or ``"miss"``) is told how many hot ids of each read
    were answered from memory; ids outside ``hot`` are not counted. Safe to share between threads: entries
    are whole dicts replaced by one assignment, and readers get copies."""

    def __init__(self, backend: StoreBackend, hot: Iterable[str],
                 on_lookup: Callable[[str, int], None] | None = None) -> None:
        self.backend, self.limits = backend, backend.limits
        self.hot = frozenset(str(i) for i in hot)
        self.on_lookup = on_lookup
        self._attributes: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._attributes)

    def read(self, side: str, ids: Sequence[str], now: Sequence[float], windows_s: Sequence[int], history: bool,
             attributes: bool | Sequence[bool] = True) -> list[EntityState]:
        if side != "item" or not self.hot:
            return self.backend.read(side, ids, now, windows_s, history, attributes)
        held = [self._attributes.get(key) for key in ids]
        wanted = [h is None and a for h, a in zip(held, _flags(attributes, len(ids)))]  # attributes still to read
        states = self.backend.read(side, ids, now, windows_s, history, wanted)
        out, hits, misses = [], 0, 0
        for key, state, cached in zip(ids, states, held):
            if cached is not None:
                hits += 1
                state = EntityState(dict(cached), state.history, state.counts)
            elif key in self.hot:
                misses += 1
                self._attributes[key] = dict(state.attributes)
            out.append(state)
        if self.on_lookup is not None:
            if hits:
                self.on_lookup(HIT, hits)
            if misses:
                self.on_lookup(MISS, misses)
        return out

    def put_attributes(self, side: str, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.backend.put_attributes(side, records)
        if side == "item":
            for key in records:
                self._attributes.pop(str(key), None)

    def append(self, users: Sequence[str], items: Sequence[str], timestamps: Sequence[float], offset: int,
               expected: int | None = None) -> bool:
        return self.backend.append(users, items, timestamps, offset, expected)

    def offset(self) -> int:
        return self.backend.offset()

    def close(self) -> None:
        self.backend.close()

    def __getattr__(self, name: str) -> Any:  # backend-specific calls (run_once, snapshot) go to the backend
        return getattr(self.backend, name)


def _flags(attributes: bool | Sequence[bool], n: int) -> Sequence[bool]:
    return [attributes] * n if isinstance(attributes, bool) else attributes
