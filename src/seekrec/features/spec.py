"""``FeatureSpec``: the fitted columns of both sides, their schemas, transforms and a versioned file pair.

``FeatureSpecConfig`` lists the columns per side; ``config.fit(data, train_events)`` learns every
column's state and returns a ``FeatureSpec``. The spec turns raw rows into ``FeatureBatch`` objects
(``transform``), tells models what to build (``schema``) and tells row builders what to fetch
(``needs``). It saves as ``feature_spec.json`` + ``feature_spec.safetensors``; ``version`` is a
sha256 over both, which the model registry records and ``load`` re-checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from seekrec.data.schema import IdMap, InteractionData
from seekrec.data.splits import UserSequences
from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.features.behaviour import SequenceColumn, SequenceConfig, WindowCountColumn, WindowCountConfig
from seekrec.features.columns import BucketizedConfig, CategoricalConfig, Column, ColumnConfig, ColumnValues
from seekrec.features.history import Events, as_events
from seekrec.features.rows import SIDES, FitContext, Rows, check_side, n_rows
from seekrec.features.text import TextConfig, TextMethod
from seekrec.io import atomic_path, atomic_write_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPEC_FILE = "feature_spec.json"
ARRAYS_FILE = "feature_spec.safetensors"
# The one place a serialised column kind becomes a config class.
COLUMN_KINDS: dict[str, type[ColumnConfig]] = {
    cls.kind: cls for cls in (CategoricalConfig, BucketizedConfig, SequenceConfig, WindowCountConfig, TextConfig)
}


class FeatureSpecError(ValueError):
    """A saved feature spec that cannot be loaded as written; names the file at fault."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class RowNeeds:
    """What a row builder must fetch for one side: static attributes, the sequence, window counts."""

    attributes: tuple[str, ...] = ()  # table columns
    sequence_len: int = 0  # 0: no sequence
    windows: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (window-count column name, windows in seconds)

    @property
    def all_windows(self) -> tuple[int, ...]:
        """Every window (seconds) any column of this side counts, sorted."""
        return tuple(sorted({w for _, ws in self.windows for w in ws}))

    @property
    def horizon_s(self) -> int:
        """How far back event times must be kept to count the longest window."""
        return max(self.all_windows, default=0)


@dataclass(frozen=True)
class FeatureSpecConfig:
    """The feature columns of each side. At most one sequence (user side) and one text column (item side)."""

    user: tuple[ColumnConfig, ...] = ()
    item: tuple[ColumnConfig, ...] = ()

    def __post_init__(self) -> None:
        for side in SIDES:
            columns = tuple(getattr(self, side))
            object.__setattr__(self, side, columns)
            for column in columns:
                if not isinstance(column, ColumnConfig):
                    raise TypeError(f"{side} columns must be column configs, got {type(column).__name__}")
            names = [c.name for c in columns]
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{side} side has repeated column names {repeated}; give each column its own name")
        if any(isinstance(c, SequenceConfig) for c in self.item):
            raise ValueError("a sequence column belongs on the user side; move it from 'item' to 'user'")
        if any(isinstance(c, TextConfig) for c in self.user):
            raise ValueError("a text column belongs on the item side; move it from 'user' to 'item'")
        if sum(isinstance(c, SequenceConfig) for c in self.user) > 1:
            raise ValueError("the user side may have one sequence column (FeatureBatch holds one sequence)")
        if sum(isinstance(c, TextConfig) for c in self.item) > 1:
            raise ValueError("the item side may have one text column (FeatureBatch holds one text embedding)")

    @classmethod
    def movielens(cls, sequence_len: int = 50, text: TextMethod = TextMethod.TFIDF, text_dim: int = 32,
                  windows_days: tuple[float, ...] = (1.0, 7.0)) -> FeatureSpecConfig:
        """The default for MovieLens-like data: demographics, history and activity for users;
        genres, year, title text and popularity for items (the item id itself is the model's)."""
        return cls(
            user=(
                CategoricalConfig("gender"),
                CategoricalConfig("occupation"),
                BucketizedConfig("age", boundaries=(18, 25, 35, 45, 50, 56)),
                CategoricalConfig("zip3", source="zip", prefix_len=3, hash_buckets=1000),
                SequenceConfig("history", length=sequence_len),
                WindowCountConfig("counts", windows_days=windows_days),
            ),
            item=(
                CategoricalConfig("genres", multi_valued=True, max_values=8),
                BucketizedConfig("year", n_bins=10),
                TextConfig("text", sources=("title", "genres"), method=text, dim=text_dim),
                WindowCountConfig("counts", windows_days=windows_days),
            ),
        )

    @classmethod
    def default(cls, data: InteractionData, **kwargs: Any) -> FeatureSpecConfig:
        """``movielens(**kwargs)`` without the columns whose table columns ``data`` lacks
        (the simulator has no gender or zip, for example)."""
        full = cls.movielens(**kwargs)
        kept = {}
        for side, table in (("user", data.users), ("item", data.items)):
            columns = []
            for column in getattr(full, side):
                sources = _config_sources(column)
                present = tuple(s for s in sources if s in table.column_names)
                if isinstance(column, TextConfig) and present:
                    column = TextConfig(**{**column.to_json(), "sources": present})
                elif present != sources:
                    logger.info("default features: no %s column %s in %s, dropping %r", side, sources, data.source,
                                column.name)
                    continue
                columns.append(column)
            kept[side] = tuple(columns)
        return cls(**kept)

    def to_json(self) -> dict[str, Any]:
        return {side: [{"kind": c.kind, **c.to_json()} for c in getattr(self, side)] for side in SIDES}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FeatureSpecConfig:
        """Build from ``{"user": [{"kind": ..., ...}], "item": [...]}`` (a TOML array of tables reads the same)."""
        unknown = set(obj) - set(SIDES)
        if unknown:
            raise ValueError(f"feature spec config has unknown keys {sorted(unknown)}; use 'user' and 'item'")
        return cls(**{side: tuple(_column_from_json(c) for c in obj.get(side, ())) for side in SIDES})

    def fit(self, data: InteractionData, train_events: Events | UserSequences) -> FeatureSpec:
        """Learn every column from the training events (and the side tables' rows of their entities)."""
        events = as_events(train_events)
        if len(events) == 0:
            raise ValueError("cannot fit features on an empty training set")
        if events.users.min() < 1 or events.users.max() > data.n_users or events.items.min() < 1 \
                or events.items.max() > data.n_items:
            raise ValueError(f"training events hold ids outside the dataset ({data.n_users} users, "
                             f"{data.n_items} items); pass events of this dataset")
        start = time.perf_counter()
        columns = {}
        for side in SIDES:
            ctx = FitContext(data, events, side)
            columns[side] = tuple(config.fit(ctx) for config in getattr(self, side))
        spec = FeatureSpec(self, columns, data.item_ids)
        logger.info("fitted feature spec %s on %d events in %.2fs", spec.version[:12], len(events),
                    time.perf_counter() - start)
        return spec


class FeatureSpec:
    """Fitted columns per side plus the item universe (raw item ids) the spec was fitted on."""

    def __init__(self, config: FeatureSpecConfig, columns: dict[str, tuple[Column, ...]], item_ids: IdMap) -> None:
        self.config = config
        self._columns = {side: tuple(columns.get(side, ())) for side in SIDES}
        self.item_ids = item_ids
        self._item_index = {str(raw): i + 1 for i, raw in enumerate(item_ids.raw.tolist())}
        self._needs = {side: self._find_needs(side) for side in SIDES}
        payload, arrays = self.payload()
        self.version = _digest(payload, arrays)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def columns(self, side: str) -> tuple[Column, ...]:
        return self._columns[check_side(side)]

    def column(self, side: str, name: str) -> Column:
        for column in self.columns(side):
            if column.name == name:
                return column
        raise KeyError(f"no {side} column {name!r}; the spec has {[c.name for c in self.columns(side)]}")

    def schema(self, side: str) -> FeatureSchema:
        """What a model needs to size its input layers for ``side``."""
        parts = [c.schema() for c in self.columns(side)]
        return FeatureSchema(
            categorical=tuple(pair for p in parts for pair in p.categorical),
            dense=tuple(name for p in parts for name in p.dense),
            text_dim=max((p.text_dim for p in parts), default=0),
            sequence_len=max((p.sequence_len for p in parts), default=0),
            n_items=self.n_items,
        )

    def needs(self, side: str) -> RowNeeds:
        """Which raw inputs the rows for ``side`` must carry (row builders and the store read this)."""
        return self._needs[check_side(side)]

    def _find_needs(self, side: str) -> RowNeeds:
        columns = self.columns(side)
        attributes = tuple(dict.fromkeys(s for c in columns for s in c.sources))
        sequence = max((c.length for c in columns if isinstance(c, SequenceColumn)), default=0)
        windows = tuple((c.name, c.windows_s) for c in columns if isinstance(c, WindowCountColumn))
        return RowNeeds(attributes, sequence, windows)

    def item_index(self, raw_ids: Sequence[object]) -> np.ndarray:
        """``[B]`` spec item ids of raw item ids; 0 for items the spec was not fitted on."""
        return np.fromiter((self._item_index.get(str(r), 0) for r in raw_ids), dtype=np.int64, count=len(raw_ids))

    def transform(self, side: str, rows: Rows) -> FeatureBatch:
        """Raw rows of ``side`` (``B`` rows, offline or from the store) -> ``FeatureBatch``."""
        b = n_rows(rows)
        values = [c.transform(rows) for c in self.columns(side)]
        dense = [v.dense for v in values if v.dense is not None]
        return FeatureBatch(
            categorical={k: torch.from_numpy(a) for v in values for k, a in v.categorical.items()},
            dense=torch.from_numpy(np.concatenate(dense, axis=1)) if dense else None,
            text=_one(values, "text", b),
            sequence=_one(values, "sequence", b),
            recency=_one(values, "recency", b),
        )

    def payload(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything the spec is, as (JSON-able dict, named arrays); ``version`` hashes exactly this."""
        columns: dict[str, list[dict[str, Any]]] = {}
        arrays: dict[str, np.ndarray] = {}
        for side in SIDES:
            columns[side] = []
            for column in self.columns(side):
                state, column_arrays = column.state()
                columns[side].append({"config": {"kind": column.config.kind, **column.config.to_json()},
                                      "state": state})
                for key, array in column_arrays.items():
                    arrays[f"{side}.{column.name}.{key}"] = np.ascontiguousarray(array)
        payload = {"format_version": FORMAT_VERSION, "item_ids": self.item_ids.to_json(), "columns": columns}
        return payload, arrays

    def save(self, directory: str | Path) -> Path:
        """Write the arrays, then the JSON (last, so a directory with the JSON is complete); atomic."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        payload, arrays = self.payload()
        with atomic_path(out / ARRAYS_FILE) as tmp:
            save_file(arrays, str(tmp))
        atomic_write_json(out / SPEC_FILE, {"version": self.version, **payload})
        return out

    @classmethod
    def load(cls, directory: str | Path) -> FeatureSpec:
        """Read a saved spec; raises ``FeatureSpecError`` if its content does not hash to its version."""
        root = Path(directory)
        json_path, arrays_path = root / SPEC_FILE, root / ARRAYS_FILE
        for path in (json_path, arrays_path):
            if not path.exists():
                raise FeatureSpecError(path, "not found: save a fitted spec with FeatureSpec.save(directory)")
        try:
            payload = json.loads(json_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FeatureSpecError(json_path, f"not valid JSON ({exc}); re-fit and save the spec") from exc
        if payload.get("format_version") != FORMAT_VERSION:
            raise FeatureSpecError(json_path, f"format_version {payload.get('format_version')!r} is not supported "
                                   f"(expected {FORMAT_VERSION}); re-fit the spec with this version of seekrec")
        recorded = payload.pop("version", None)
        arrays = load_file(str(arrays_path))
        try:
            spec = cls._from_payload(payload, arrays)
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureSpecError(json_path, f"cannot rebuild the spec ({exc}); re-fit and save it") from exc
        if spec.version != recorded:
            raise FeatureSpecError(json_path, f"content hashes to version {spec.version[:16]}... but the file records "
                                   f"{str(recorded)[:16]}...: the spec or {ARRAYS_FILE} was changed or mixed with "
                                   "another spec's files. Re-fit and save it; do not edit saved specs by hand")
        return spec

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], arrays: dict[str, np.ndarray]) -> FeatureSpec:
        columns: dict[str, tuple[Column, ...]] = {}
        configs: dict[str, tuple[ColumnConfig, ...]] = {}
        for side in SIDES:
            built = []
            for entry in payload["columns"][side]:
                config = _column_from_json(entry["config"])
                prefix = f"{side}.{config.name}."
                column_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                built.append(config.restore(entry["state"], column_arrays))
            columns[side] = tuple(built)
            configs[side] = tuple(c.config for c in built)
        return cls(FeatureSpecConfig(**configs), columns, IdMap.from_json(payload["item_ids"]))


def _column_from_json(obj: dict[str, Any]) -> ColumnConfig:
    fields = dict(obj)
    kind = fields.pop("kind", None)
    if kind not in COLUMN_KINDS:
        raise ValueError(f"unknown feature column kind {kind!r} in {obj!r}; known kinds: {sorted(COLUMN_KINDS)}")
    return COLUMN_KINDS[kind].from_json(fields)


def _config_sources(config: ColumnConfig) -> tuple[str, ...]:
    """Table columns a column config reads (before fitting)."""
    if isinstance(config, TextConfig):
        return config.sources
    if isinstance(config, (CategoricalConfig, BucketizedConfig)):
        return (config.source,) if config.source else ()
    return ()


def _one(values: list[ColumnValues], name: str, b: int) -> torch.Tensor | None:
    """The single column output called ``name`` (text / sequence / recency), as a tensor."""
    found = [getattr(v, name) for v in values if getattr(v, name) is not None]
    if not found:
        return None
    array = found[0]
    if len(array) != b:
        raise ValueError(f"column output {name!r} has {len(array)} rows, expected {b}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _digest(payload: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """sha256 over canonical JSON (sorted keys, no whitespace, no NaN) and every array's name,
    dtype, shape and bytes in name order."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"\n{name}|{array.dtype.str}|{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
