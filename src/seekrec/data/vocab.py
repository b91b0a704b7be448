"""A growable vocabulary for live traffic: raw ids as strings <-> contiguous ids 1..N (0 = padding).

Offline tables use ``IdMap`` (sorted, immutable). Online, new items and users appear at any time;
they get the next free id, so every id already in a model keeps its meaning and the model's item
table only has to grow at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from seekrec.data.schema import IdMap


class Vocab:
    """Raw id (string) -> contiguous id; ``add`` appends unseen raw ids."""

    def __init__(self, raw_ids: Iterable[str] = ()) -> None:
        self._raw: list[str] = []
        self._index: dict[str, int] = {}
        for raw in raw_ids:
            self.add(raw)

    @classmethod
    def from_idmap(cls, idmap: IdMap) -> Vocab:
        return cls(str(r) for r in idmap.raw.tolist())

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def add(self, raw: object) -> int:
        """The id of ``raw``, appending it if new."""
        key = str(raw)
        if not key:
            raise ValueError("an id must be a non-empty string")
        found = self._index.get(key)
        if found is not None:
            return found
        self._raw.append(key)
        self._index[key] = len(self._raw)
        return len(self._raw)

    def get(self, raw: object, default: int = 0) -> int:
        """The id of ``raw``, or ``default`` (0, padding) if unknown."""
        return self._index.get(str(raw), default)

    def encode(self, raws: Sequence[object]) -> np.ndarray:
        """Known raw ids -> ids, unknown -> 0."""
        return np.fromiter((self._index.get(str(r), 0) for r in raws), dtype=np.int64, count=len(raws))

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        out = []
        for i in np.asarray(ids, dtype=np.int64).tolist():
            if not 1 <= i <= len(self._raw):
                raise KeyError(f"id {i} is outside 1..{len(self._raw)}")
            out.append(self._raw[i - 1])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"raw": list(self._raw)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Vocab:
        raw = obj.get("raw")
        if not isinstance(raw, list):
            raise ValueError("vocabulary JSON needs a 'raw' list of ids")
        vocab = cls(raw)
        if len(vocab) != len(raw):
            raise ValueError("vocabulary JSON has duplicate ids")
        return vocab


CATALOG_FILE = "catalog.json"


class Catalog:
    """What serving needs to know about items besides the model: raw ids and interaction counts.

    Stored as ``catalog.json`` beside every model version, so a server maps the model's item ids
    back to raw ids and has a popularity ranking for users it knows nothing about.
    """

    def __init__(self, items: Vocab, counts: np.ndarray | None = None) -> None:
        self.items = items
        self.counts = np.zeros(len(items) + 1, dtype=np.int64) if counts is None else np.asarray(counts, np.int64)
        if self.counts.shape != (len(items) + 1,):
            raise ValueError(f"counts must have length n_items + 1 = {len(items) + 1}, got {self.counts.shape}")

    @classmethod
    def from_data(cls, item_ids: IdMap, event_items: np.ndarray) -> Catalog:
        """Catalog of a prepared dataset: its item id map and the count of each item's events."""
        return cls(Vocab.from_idmap(item_ids), np.bincount(event_items, minlength=len(item_ids) + 1))

    def add(self, raw: object) -> int:
        """Id of ``raw``, registering a new item (count 0) if unseen."""
        n_before = len(self.items)
        item = self.items.add(raw)
        if len(self.items) > n_before:
            self.counts = np.append(self.counts, 0)
        return item

    def record(self, item: int, n: int = 1) -> None:
        self.counts[item] += n

    def popular(self, k: int) -> np.ndarray:
        """The ``k`` most-interacted item ids (ties: lower id first)."""
        order = np.argsort(-self.counts[1:], kind="stable") + 1
        return order[:k]

    def to_bytes(self) -> bytes:
        return json.dumps({**self.items.to_json(), "counts": self.counts[1:].tolist()}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Catalog:
        obj = json.loads(data)
        counts = np.concatenate([[0], np.asarray(obj.get("counts", []), dtype=np.int64)])
        return cls(Vocab.from_json(obj), counts)
