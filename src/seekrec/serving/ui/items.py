"""Item titles, genres and years for the console, read from the prepared dataset the server was started on.

The server itself needs only raw ids; a person needs a title. The table is read once, off the event loop,
on first use, and items the dataset does not describe (live releases, ``POST /items`` additions) are shown
by their raw id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from seekrec.data.schema import TABLE_FILES, IdMap, read_manifest


@dataclass(frozen=True)
class ItemFacts:
    """What the console shows of one item."""

    title: str
    genres: tuple[str, ...]
    year: int | None


class ItemTable:
    """Raw item id -> ``ItemFacts`` of a prepared dataset directory (empty without one)."""

    def __init__(self, facts: dict[str, ItemFacts]) -> None:
        self._facts = facts

    @classmethod
    def read(cls, data_dir: Path | None) -> ItemTable:
        """The items table of ``data_dir`` keyed by raw id (the manifest's id map turns dataset ids back)."""
        if data_dir is None:
            return cls({})
        raw = IdMap.from_json(read_manifest(data_dir)["id_maps"]["item"]).raw
        table = pq.read_table(Path(data_dir) / TABLE_FILES["items"], columns=["item_id", "title", "genres", "year"])
        facts = {}
        for item_id, title, genres, year in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            facts[str(raw[item_id - 1])] = ItemFacts(title or str(raw[item_id - 1]), tuple(genres or ()), year)
        return cls(facts)

    def __len__(self) -> int:
        return len(self._facts)

    def get(self, raw_id: str) -> ItemFacts:
        """The facts of ``raw_id``; its id as the title when the dataset does not describe it."""
        return self._facts.get(raw_id) or ItemFacts(f"item {raw_id}", (), None)
