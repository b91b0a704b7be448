"""The canonical data model every source is converted into.

Three Parquet tables and a JSON manifest:

- ``events``: ``user_id, item_id, timestamp, event_type, value`` (ids are contiguous ints from 1;
  0 is reserved for padding), in the raw file's order so equal timestamps keep that order;
- ``items``: ``item_id, title, genres, year`` plus any source-specific text columns;
- ``users``: ``user_id`` plus any attributes (age, gender, occupation, ...);
- ``manifest.json``: source, checksums of source and table files, row counts, id maps, options.

The manifest is written last, so a directory with a manifest is complete; readers verify every
table against the checksum the manifest records.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seekrec.data.errors import DataFormatError
from seekrec.io import atomic_path, atomic_write_json, sha256_file

FORMAT_VERSION = 1
PAD_ID = 0

EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("event_type", pa.string()),
        ("value", pa.float32()),
    ]
)
ITEMS_REQUIRED = pa.schema(
    [("item_id", pa.int64()), ("title", pa.string()), ("genres", pa.list_(pa.string())), ("year", pa.int32())]
)
USERS_REQUIRED = pa.schema([("user_id", pa.int64())])
TABLE_FILES = {"events": "events.parquet", "items": "items.parquet", "users": "users.parquet"}
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class IdMap:
    """Raw ids <-> contiguous ints ``1..n`` (0 is padding), ordered by sorted raw id.

    Raw ids are all ints or all strings. Sorting makes the map independent of file order, so the
    same raw data always yields the same ids.
    """

    raw: np.ndarray  # [n] sorted unique raw ids; raw[i] has contiguous id i + 1

    @classmethod
    def fit(cls, values: Sequence[Any] | np.ndarray) -> IdMap:
        """Build the map from every raw id that occurs in ``values``."""
        return cls(np.unique(np.asarray(values)))

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def encode(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Raw ids -> contiguous ids; raises ``KeyError`` naming the first unknown raw id."""
        values = np.asarray(values)
        if len(self) == 0:
            if values.size:
                raise KeyError(f"unknown raw id {values.flat[0]!r}: the id map is empty")
            return np.zeros(values.shape, dtype=np.int64)
        pos = np.searchsorted(self.raw, values)
        pos_clipped = np.minimum(pos, len(self) - 1)
        known = self.raw[pos_clipped] == values
        if not np.all(known):
            bad = values[~known].flat[0]
            raise KeyError(f"unknown raw id {bad!r}: it is not in the id map")
        return pos_clipped.astype(np.int64) + 1

    def decode(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Contiguous ids -> raw ids; raises ``KeyError`` for 0 (padding) or out-of-range ids."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = (ids < 1) | (ids > len(self))
        if np.any(bad):
            raise KeyError(f"id {int(ids[bad].flat[0])} is outside 1..{len(self)}")
        return self.raw[ids - 1]

    def to_json(self) -> dict[str, Any]:
        kind = "int" if np.issubdtype(self.raw.dtype, np.integer) else "str"
        return {"kind": kind, "raw": self.raw.tolist()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IdMap:
        dtype = np.int64 if obj["kind"] == "int" else np.str_
        return cls(np.asarray(obj["raw"], dtype=dtype))


@dataclass
class InteractionData:
    """A prepared dataset in memory: the three canonical tables plus their id maps."""

    events: pa.Table
    items: pa.Table
    users: pa.Table
    user_ids: IdMap
    item_ids: IdMap
    source: str
    source_files: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_schema("events", self.events, EVENTS_SCHEMA, exact=True)
        _check_schema("items", self.items, ITEMS_REQUIRED, exact=False)
        _check_schema("users", self.users, USERS_REQUIRED, exact=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def interactions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user_id, item_id, timestamp)`` as int64 arrays, in stored (raw file) order."""
        cols = [self.events.column(name).to_numpy() for name in ("user_id", "item_id", "timestamp")]
        return cols[0].astype(np.int64), cols[1].astype(np.int64), cols[2].astype(np.int64)

    def event_values(self) -> np.ndarray:
        """``[E]`` float32 ``value`` of every event (e.g. a rating; missing values are 0), in stored order."""
        column = self.events.column("value").fill_null(0.0)
        return column.to_numpy().astype(np.float32)

    def write(self, out_dir: str | Path) -> dict[str, Any]:
        """Write tables then the manifest, each atomically; returns the manifest."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tables: dict[str, dict[str, Any]] = {}
        for name, table in (("events", self.events), ("items", self.items), ("users", self.users)):
            path = out / TABLE_FILES[name]
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            tables[name] = {"file": path.name, "rows": table.num_rows, "sha256": sha256_file(path)}
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source_files": dict(self.source_files),
            "options": dict(self.options),
            "tables": tables,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "id_maps": {"user": self.user_ids.to_json(), "item": self.item_ids.to_json()},
        }
        atomic_write_json(out / MANIFEST_FILE, manifest)
        return manifest

    @classmethod
    def read(cls, data_dir: str | Path, verify: bool = True) -> InteractionData:
        """Read a prepared directory; with ``verify`` every table must match its checksum."""
        manifest = read_manifest(data_dir)
        root = Path(data_dir)
        tables = {}
        for name, meta in manifest["tables"].items():
            path = root / meta["file"]
            if not path.exists():
                raise DataFormatError(path, "missing; the manifest lists it. Re-run `seekrec data prepare`.")
            if verify and sha256_file(path) != meta["sha256"]:
                raise DataFormatError(path, "checksum does not match the manifest: the file was changed or "
                                      "truncated. Re-run `seekrec data prepare`.")
            tables[name] = pq.read_table(path)
        return cls(
            events=tables["events"],
            items=tables["items"],
            users=tables["users"],
            user_ids=IdMap.from_json(manifest["id_maps"]["user"]),
            item_ids=IdMap.from_json(manifest["id_maps"]["item"]),
            source=manifest["source"],
            source_files=manifest.get("source_files", {}),
            options=manifest.get("options", {}),
        )


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """Load and sanity-check ``manifest.json`` of a prepared directory."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.exists():
        raise DataFormatError(path, "not found: this is not a prepared dataset directory. "
                              "Create one with `seekrec data prepare` or `seekrec data simulate`.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(path, f"not valid JSON ({exc}); re-run `seekrec data prepare`.") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataFormatError(path, f"format_version {version!r} is not supported (expected {FORMAT_VERSION}).")
    return manifest


def build_events(
    users: np.ndarray,
    items: np.ndarray,
    timestamps: np.ndarray,
    values: np.ndarray,
    event_type: str | Iterable[str],
) -> pa.Table:
    """Assemble an ``events`` table from already-encoded columns."""
    n = len(users)
    if isinstance(event_type, str):
        types = pa.repeat(pa.scalar(event_type, pa.string()), n)
    else:
        types = pa.array(list(event_type), pa.string())
    return pa.Table.from_arrays(
        [
            pa.array(np.asarray(users, dtype=np.int64)),
            pa.array(np.asarray(items, dtype=np.int64)),
            pa.array(np.asarray(timestamps, dtype=np.int64)),
            types,
            pa.array(np.asarray(values, dtype=np.float32)),
        ],
        schema=EVENTS_SCHEMA,
    )


def _check_schema(name: str, table: pa.Table, required: pa.Schema, exact: bool) -> None:
    for fld in required:
        idx = table.schema.get_field_index(fld.name)
        if idx < 0:
            raise ValueError(f"{name} table is missing column {fld.name!r} ({fld.type})")
        if table.schema.field(idx).type != fld.type:
            raise ValueError(f"{name} column {fld.name!r} has type {table.schema.field(idx).type}, expected {fld.type}")
    if exact and table.schema.names != required.names:
        raise ValueError(f"{name} table columns {table.schema.names} must be exactly {required.names}")
