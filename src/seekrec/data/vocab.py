"""A growable vocabulary for live traffic: raw ids as strings <-> contiguous ids 1..N (0 = padding).

Offline tables use ``IdMap`` (sorted, immutable). Online, new items and users appear at any time;
they get the next free id, so every id already in a model keeps its meaning and the model's item
table only has to grow at the end.
"""

from __future__ import annotations

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
