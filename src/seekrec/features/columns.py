"""Feature columns: a config (what to compute) that ``fit``s into a column (how, with learned state).

Each column turns raw rows into ``ColumnValues`` with one ``transform`` used for offline batches and
single online requests alike. Fitted state is split into a JSON-able dict and named numpy arrays, so
a spec is saved as JSON + safetensors, never pickled. This module holds the base classes and the
attribute columns (categorical, bucketized); behaviour columns live in ``behaviour``, text in ``text``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from seekrec.features.batch import FeatureSchema
from seekrec.features.rows import FitContext, Rows, as_float, category_key, is_missing, require

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MISSING_ID = 0
OOV_ID = 1


@dataclass
class ColumnValues:
    """One column's output for ``B`` rows, in numpy; the spec assembles these into a ``FeatureBatch``."""

    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [B, M] int64
    dense: np.ndarray | None = None  # [B, F] float32
    text: np.ndarray | None = None  # [B, T] float32
    sequence: np.ndarray | None = None  # [B, L] int64
    recency: np.ndarray | None = None  # [B, L] float32


@dataclass(frozen=True)
class ColumnConfig(ABC):
    """What a column computes; ``fit`` learns its state from training data."""

    kind: ClassVar[str]
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"{type(self).__name__}.name must be an identifier (letters, digits, _), "
                             f"got {self.name!r}")

    @abstractmethod
    def fit(self, ctx: FitContext) -> Column:
        """Learn the column's state from training data."""

    @abstractmethod
    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Column:
        """Rebuild a fitted column from what ``Column.state`` returned."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ColumnConfig:
        try:
            return cls(**obj)
        except TypeError as exc:
            raise ValueError(f"bad {cls.kind} column config {obj!r}: {exc}") from exc

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field in ``__post_init__`` (JSON lists -> tuples) despite ``frozen``."""
        object.__setattr__(self, name, value)


class Column(ABC):
    """A fitted column: ``transform(rows)`` plus its schema and serialisable state."""

    config: ColumnConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def sources(self) -> tuple[str, ...]:
        """Table columns this column reads from the side's static attributes."""
        return ()

    @abstractmethod
    def schema(self) -> FeatureSchema:
        """This column's part of the side's ``FeatureSchema``."""

    @abstractmethod
    def transform(self, rows: Rows) -> ColumnValues:
        """Raw rows (``B`` of them) -> feature values; never fails on missing values."""

    @abstractmethod
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Fitted state as (JSON-able dict, named arrays)."""


def stable_hash(key: str, buckets: int) -> int:
    """Bucket ``1..buckets`` of ``key``: blake2b, so it never changes between processes or versions
    (Python's ``hash()`` is salted per process)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets + 1


@dataclass(frozen=True)
class CategoricalConfig(ColumnConfig):
    """A string-like attribute -> ids, by a fitted vocabulary or by hashing.

    Vocabulary: values seen on at least ``min_count`` training entities get ids ``2..``, anything
    else the OOV id 1, missing 0. Hashing (``hash_buckets > 0``): ids ``1..hash_buckets`` from a
    stable hash, no vocabulary. ``multi_valued``: the value is a list (genres) and the output is
    ``[B, M]`` right-padded with 0, ``M`` = the widest training row capped at ``max_values``.
    ``prefix_len > 0`` keeps only the first characters (zip code -> region).
    """

    kind: ClassVar[str] = "categorical"
    source: str | None = None
    min_count: int = 1
    hash_buckets: int = 0
    multi_valued: bool = False
    max_values: int = 8
    prefix_len: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("source", self.source or self.name)
        if self.min_count < 1:
            raise ValueError(f"column {self.name!r}: min_count must be >= 1, got {self.min_count}")
        if self.hash_buckets < 0:
            raise ValueError(f"column {self.name!r}: hash_buckets must be >= 0 (0: use a vocabulary), "
                             f"got {self.hash_buckets}")
        if self.hash_buckets and self.min_count != 1:
            raise ValueError(f"column {self.name!r}: min_count only applies to vocabularies; "
                             "drop it or set hash_buckets=0")
        if self.max_values < 1 or self.prefix_len < 0:
            raise ValueError(f"column {self.name!r}: need max_values >= 1 and prefix_len >= 0")

    def keys(self, value: Any) -> list[str]:
        """The canonical category keys of one raw value (deduplicated, in order)."""
        if isinstance(value, (list, tuple, np.ndarray)):
            if not self.multi_valued:
                raise ValueError(f"column {self.name!r} got a list {value!r}; set multi_valued=True for list columns")
            parts = list(value)
        else:
            parts = [] if is_missing(value) else [value]
        out: list[str] = []
        for part in parts:
            key = category_key(part)
            if key is None:
                continue
            key = key[: self.prefix_len] if self.prefix_len else key
            if key not in out:
                out.append(key)
        return out

    def fit(self, ctx: FitContext) -> CategoricalColumn:
        per_entity = [self.keys(v) for v in ctx.values(self.source).tolist()]
        width = min(self.max_values, max((len(k) for k in per_entity), default=1)) if self.multi_valued else 1
        if self.hash_buckets:
            return CategoricalColumn(self, (), max(width, 1))
        counts = Counter(key for keys in per_entity for key in keys)
        vocab = sorted((k for k, c in counts.items() if c >= self.min_count), key=lambda k: (-counts[k], k))
        return CategoricalColumn(self, tuple(vocab), max(width, 1))

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> CategoricalColumn:
        return CategoricalColumn(self, tuple(state["vocabulary"]), int(state["width"]))


class CategoricalColumn(Column):
    """Fitted categorical column; ``transform`` gives ``categorical[name]`` of shape ``[B, M]``."""

    def __init__(self, config: CategoricalConfig, vocabulary: tuple[str, ...], width: int) -> None:
        self.config = config
        self.vocabulary = vocabulary
        self.width = width
        self._index = {key: i + 2 for i, key in enumerate(vocabulary)}

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.config.source,)

    @property
    def cardinality(self) -> int:
        return self.config.hash_buckets + 1 if self.config.hash_buckets else len(self.vocabulary) + 2

    def encode_key(self, key: str) -> int:
        """Id of one canonical key: its vocabulary id, OOV (1), or its hash bucket."""
        if self.config.hash_buckets:
            return stable_hash(key, self.config.hash_buckets)
        return self._index.get(key, OOV_ID)

    def schema(self) -> FeatureSchema:
        return FeatureSchema(categorical=((self.name, self.cardinality),))

    def transform(self, rows: Rows) -> ColumnValues:
        values = require(rows, self.config.source, self.name)
        # Rows repeat a few distinct values (genders, genre lists), so encode each distinct one once.
        memo: dict[Any, tuple[int, ...]] = {}
        encoded = []
        for value in values.tolist():
            key = tuple(value) if isinstance(value, (list, np.ndarray)) else value
            try:
                ids = memo.get(key)
            except TypeError:  # an unhashable odd value (a dict): encode it without the memo
                ids = self.encode(value)
            if ids is None:
                ids = memo[key] = self.encode(value)
            encoded.append(ids)
        out = np.array(encoded, dtype=np.int64).reshape(len(values), self.width)  # [B, M]
        return ColumnValues(categorical={self.name: out})

    def encode(self, value: Any) -> tuple[int, ...]:
        """Ids of one raw value, right-padded with 0 to the column's width M."""
        ids = [self.encode_key(key) for key in self.config.keys(value)[: self.width]]
        return tuple(ids) + (MISSING_ID,) * (self.width - len(ids))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"vocabulary": list(self.vocabulary), "width": self.width}, {}


@dataclass(frozen=True)
class BucketizedConfig(ColumnConfig):
    """A numeric attribute -> a bin id, plus (``dense``) its standardised value.

    Bins come from ``boundaries`` when given, else from ``n_bins`` training quantiles. A value equal
    to a boundary falls in the bin above it. Ids: 0 missing (None, NaN, non-numeric), ``1..len(b)+1``
    the bins; the dense value of a missing row is 0.0 (the training mean).
    """

    kind: ClassVar[str] = "bucketized"
    source: str | None = None
    boundaries: tuple[float, ...] = ()
    n_bins: int = 10
    dense: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("source", self.source or self.name)
        self._set("boundaries", tuple(float(b) for b in self.boundaries))
        b = np.asarray(self.boundaries)
        if not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
            raise ValueError(f"column {self.name!r}: boundaries must be finite and strictly increasing, "
                             f"got {self.boundaries}")
        if not self.boundaries and self.n_bins < 2:
            raise ValueError(f"column {self.name!r}: n_bins must be >= 2 when no boundaries are given")

    def fit(self, ctx: FitContext) -> BucketizedColumn:
        values = as_float(ctx.values(self.source))
        values = values[~np.isnan(values)]
        if self.boundaries:
            boundaries = np.asarray(self.boundaries)
        elif values.size:
            boundaries = np.unique(np.quantile(values, np.linspace(0, 1, self.n_bins + 1)[1:-1]))
        else:
            boundaries = np.zeros(0)
        mean = float(values.mean()) if values.size else 0.0
        std = float(values.std()) if values.size else 1.0
        return BucketizedColumn(self, boundaries, mean, std if std > 0 else 1.0)

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> BucketizedColumn:
        return BucketizedColumn(self, np.asarray(state["boundaries"], dtype=np.float64), state["mean"], state["std"])


class BucketizedColumn(Column):
    """Fitted bucketized column: ``categorical[name]`` ``[B, 1]`` and, if configured, one dense value."""

    def __init__(self, config: BucketizedConfig, boundaries: np.ndarray, mean: float, std: float) -> None:
        self.config = config
        self.boundaries = np.asarray(boundaries, dtype=np.float64)
        self.mean = float(mean)
        self.std = float(std)

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.config.source,)

    def schema(self) -> FeatureSchema:
        dense = (self.name,) if self.config.dense else ()
        return FeatureSchema(categorical=((self.name, len(self.boundaries) + 2),), dense=dense)

    def transform(self, rows: Rows) -> ColumnValues:
        x = as_float(require(rows, self.config.source, self.name))  # [B]
        missing = np.isnan(x)
        ids = np.where(missing, MISSING_ID, np.searchsorted(self.boundaries, np.nan_to_num(x), side="right") + 1)
        dense = None
        if self.config.dense:
            dense = np.where(missing, 0.0, (np.nan_to_num(x) - self.mean) / self.std).astype(np.float32)[:, None]
        return ColumnValues(categorical={self.name: ids.astype(np.int64)[:, None]}, dense=dense)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"boundaries": self.boundaries.tolist(), "mean": self.mean, "std": self.std}, {}
