"""Raw rows: what feature columns read, whether built offline from tables or online by the store.

A ``Rows`` is a dict of equally long arrays, one entry per raw input (B rows; one online request is
B = 1). Offline, ``features.examples`` gathers them from the dataset's tables and an ``EventIndex``;
online, ``features.store`` reads them from the feature store. Both then call the same
``FeatureSpec.transform``, so a model sees identical features in training and in serving.

The reserved keys are below; attribute columns read the key of their table column name and window
counts the key of their own column name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from seekrec.data.schema import InteractionData
from seekrec.features.history import EventIndex, Events

Rows = dict[str, np.ndarray]

TIME = "timestamp"  # [B] the time each row is "as of" (unix seconds); only strictly earlier events count
ITEM_ID = "item_id"  # [B] int64 item ids of the spec's item universe, 0 for an item it does not know
SEQ_ITEMS = "seq_items"  # [B, L] int64 item ids of the user's last events, oldest first, left-padded with 0
SEQ_TIMES = "seq_times"  # [B, L] unix seconds of those events (0 at padding)
SIDES = ("user", "item")


def check_side(side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    return side


def n_rows(rows: Rows) -> int:
    """B: the length of the row arrays (they must all agree)."""
    lengths = {key: len(value) for key, value in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"raw row arrays differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def require(rows: Rows, key: str, column: str) -> np.ndarray:
    """``rows[key]``, or a ``KeyError`` saying which column needed it."""
    if key not in rows:
        raise KeyError(f"feature column {column!r} needs raw input {key!r}, which the rows lack "
                       f"(they have {sorted(rows)}); build rows with the spec's row builders or the store")
    return rows[key]


def object_array(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array whose elements may themselves be lists (``np.array`` would make 2-D)."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def is_missing(value: Any) -> bool:
    """None, NaN and empty strings count as missing (feature id 0 / value 0.0)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, str):
        return not value.strip()
    return False


def category_key(value: Any) -> str | None:
    """The canonical string of a categorical value, or None when missing.

    Numbers are written without a fractional part when whole, so ``1995`` (an int from the online
    store) and ``1995.0`` (a float from a table column with nulls) are the same category.
    """
    if is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).strip()


def as_float(values: np.ndarray) -> np.ndarray:
    """``[B]`` float64 with NaN for missing or non-numeric values (None, '', 'n/a', inf)."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.number) or values.dtype == bool:
        out = values.astype(np.float64)
    else:
        out = np.array([_to_float(v) for v in values.tolist()], dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _to_float(value: Any) -> float:
    if value is None or isinstance(value, (list, tuple, dict)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def table_values(table: pa.Table, id_column: str, source: str, n: int) -> np.ndarray:
    """``[n + 1]`` values of column ``source`` indexed by id (id 0 and ids missing from the table: missing).

    Numeric columns come back as float64 with NaN for nulls; others as an object array of Python
    values (strings, lists), the same types the online store returns.
    """
    if source not in table.column_names:
        raise KeyError(f"the {id_column.split('_')[0]} table has no column {source!r} "
                       f"(it has {table.column_names}); remove the feature column or fix its source")
    ids = table.column(id_column).to_numpy().astype(np.int64)
    column = table.column(source)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        numbers = column.to_numpy(zero_copy_only=False).astype(np.float64)
        # Integers past 2**53 would change in float64 (the store keeps them exact): leave those as objects.
        if pa.types.is_floating(column.type) or not np.any(np.abs(numbers) >= 2.0 ** 53):
            out = np.full(n + 1, np.nan)
            out[ids] = numbers
            return out
    out = np.empty(n + 1, dtype=object)
    out[ids] = object_array(column.to_pylist())
    return out


@dataclass
class FitContext:
    """What a column may look at while fitting: training events and the side tables.

    Attribute statistics (vocabularies, quantiles) come from the entities that occur in the training
    events, one count per entity, so values seen only in held-out data stay out-of-vocabulary.
    """

    data: InteractionData
    events: Events
    side: str
    _index: EventIndex | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_side(self.side)

    @property
    def n_entities(self) -> int:
        return self.data.n_users if self.side == "user" else self.data.n_items

    def event_entities(self) -> np.ndarray:
        """``[E]`` the id on this side of every training event."""
        return self.events.users if self.side == "user" else self.events.items

    def entities(self) -> np.ndarray:
        """Sorted unique ids of this side that occur in the training events."""
        return np.unique(self.event_entities())

    def values(self, source: str, entities: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Raw values of table column ``source`` for ``entities`` (default: the training entities)."""
        table = self.data.users if self.side == "user" else self.data.items
        lookup = table_values(table, f"{self.side}_id", source, self.n_entities)
        return lookup[self.entities() if entities is None else np.asarray(entities, dtype=np.int64)]

    def index(self) -> EventIndex:
        """The training events indexed by this side's entity (built once per context)."""
        if self._index is None:
            partners = self.events.items if self.side == "user" else self.events.users
            self._index = EventIndex.build(self.event_entities(), partners, self.events.timestamps, self.n_entities)
        return self._index
