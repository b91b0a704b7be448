"""Behaviour columns: the user's recent items and per-entity event counts, both as of the row's time.

The raw inputs (``seq_items``/``seq_times``, and per-window counts) are computed "strictly before
the row's time" by ``EventIndex`` offline and by the feature store online; these columns only
shape and scale them, so the two paths share every line that decides a feature's value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from seekrec.features.batch import FeatureSchema
from seekrec.features.columns import Column, ColumnConfig, ColumnValues
from seekrec.features.history import SECONDS_PER_DAY, window_seconds
from seekrec.features.rows import ITEM_ID, SEQ_ITEMS, SEQ_TIMES, TIME, FitContext, Rows, require

_RESERVED = {TIME, ITEM_ID, SEQ_ITEMS, SEQ_TIMES}


@dataclass(frozen=True)
class SequenceConfig(ColumnConfig):
    """The user's last ``length`` items before the row's time, with each one's recency.

    Output: ``sequence`` ``[B, L]`` item ids left-padded with 0, oldest first, and ``recency``
    ``[B, L]`` = ``log1p(days between the event and the row's time)`` (0 at padding). Items outside
    the spec's universe ``1..n_items`` (added after fitting) are masked like padding.
    """

    kind: ClassVar[str] = "sequence"
    name: str = "history"
    length: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 1:
            raise ValueError(f"sequence column {self.name!r}: length must be >= 1, got {self.length}")

    def fit(self, ctx: FitContext) -> SequenceColumn:
        return SequenceColumn(self, ctx.data.n_items)

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> SequenceColumn:
        return SequenceColumn(self, int(state["n_items"]))


class SequenceColumn(Column):
    """Fitted sequence column (its only state is the size of the item universe)."""

    def __init__(self, config: SequenceConfig, n_items: int) -> None:
        if n_items < 1:
            raise ValueError(f"sequence column {config.name!r} needs at least one item, got n_items={n_items}")
        self.config = config
        self.n_items = n_items

    @property
    def length(self) -> int:
        return self.config.length

    def schema(self) -> FeatureSchema:
        return FeatureSchema(sequence_len=self.length, n_items=self.n_items)

    def transform(self, rows: Rows) -> ColumnValues:
        items = np.asarray(require(rows, SEQ_ITEMS, self.name), dtype=np.int64)  # [B, L']
        times = np.asarray(require(rows, SEQ_TIMES, self.name), dtype=np.float64)  # [B, L']
        now = np.asarray(require(rows, TIME, self.name), dtype=np.float64)  # [B]
        if items.ndim != 2 or items.shape != times.shape or len(now) != len(items):
            raise ValueError(f"sequence column {self.name!r} expects [B, L] {SEQ_ITEMS} and {SEQ_TIMES} and [B] "
                             f"{TIME}, got shapes {items.shape}, {times.shape} and {now.shape}")
        width = items.shape[1]
        if width >= self.length:
            items, times = items[:, width - self.length:], times[:, width - self.length:]
        else:
            pad = ((0, 0), (self.length - width, 0))
            items, times = np.pad(items, pad), np.pad(times, pad)
        # Ids the model cannot embed, and events not strictly before the row's time, are padding.
        valid = (items >= 1) & (items <= self.n_items) & (times < now[:, None])
        days = np.maximum(now[:, None] - times, 0.0) / SECONDS_PER_DAY
        recency = np.where(valid, np.log1p(days), 0.0).astype(np.float32)
        return ColumnValues(sequence=np.where(valid, items, 0), recency=recency)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"n_items": self.n_items}, {}


@dataclass(frozen=True)
class WindowCountConfig(ColumnConfig):
    """How many events the row's entity (user or item: the spec's side) had in each trailing window.

    The raw input ``rows[name]`` is ``[B, W]`` counts of events with ``time - w <= t < time``; the
    output is ``log1p(count) / scale`` per window, ``scale`` the largest ``log1p`` count seen as of
    any training event (so training values lie in [0, 1]). Dense names: ``{name}_{days}d``.
    """

    kind: ClassVar[str] = "window_counts"
    name: str = "counts"
    windows_days: tuple[float, ...] = (1.0, 7.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name in _RESERVED:
            raise ValueError(f"window count column name {self.name!r} is a reserved row key; pick another name")
        self._set("windows_days", tuple(float(d) for d in self.windows_days))
        if not self.windows_days:
            raise ValueError(f"window count column {self.name!r} needs at least one window (windows_days)")
        seconds = [window_seconds(d) for d in self.windows_days]
        if len(set(seconds)) != len(seconds):
            raise ValueError(f"window count column {self.name!r} has repeated windows {self.windows_days}")

    @property
    def windows_s(self) -> tuple[int, ...]:
        return tuple(window_seconds(d) for d in self.windows_days)

    def fit(self, ctx: FitContext) -> WindowCountColumn:
        index = ctx.index()
        counts = index.window_counts(ctx.event_entities(), ctx.events.timestamps, self.windows_s)  # [E, W]
        peak = np.log1p(counts).max(axis=0) if len(counts) else np.zeros(len(self.windows_s))
        return WindowCountColumn(self, np.maximum(peak, 1.0))

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> WindowCountColumn:
        return WindowCountColumn(self, np.asarray(state["scales"], dtype=np.float64))


class WindowCountColumn(Column):
    """Fitted window counts: ``dense`` ``[B, W]``."""

    def __init__(self, config: WindowCountConfig, scales: np.ndarray) -> None:
        self.config = config
        self.scales = np.asarray(scales, dtype=np.float64)
        if self.scales.shape != (len(config.windows_days),) or np.any(self.scales <= 0):
            raise ValueError(f"window count column {config.name!r} needs one positive scale per window")

    @property
    def windows_s(self) -> tuple[int, ...]:
        return self.config.windows_s

    def dense_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{d:g}d" for d in self.config.windows_days)

    def schema(self) -> FeatureSchema:
        return FeatureSchema(dense=self.dense_names())

    def transform(self, rows: Rows) -> ColumnValues:
        counts = np.asarray(require(rows, self.name, self.name), dtype=np.float64)  # [B, W]
        if counts.ndim != 2 or counts.shape[1] != len(self.scales):
            raise ValueError(f"window count column {self.name!r} expects [B, {len(self.scales)}] counts, "
                             f"got shape {counts.shape}")
        counts = np.nan_to_num(np.maximum(counts, 0.0))
        return ColumnValues(dense=(np.log1p(counts) / self.scales).astype(np.float32))

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"scales": self.scales.tolist()}, {}
