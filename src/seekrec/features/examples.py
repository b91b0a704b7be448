"""Offline training examples: features of every event's user and item *as of* the event's time.

``OfflineRows`` is the offline twin of the feature store: it answers "the raw rows of these ids at
these times" from the dataset's side tables and an ``EventIndex`` over a history of events, all
vectorised. Only events strictly earlier than a row's time count, so an example never sees its own
target or anything after it. ``build_examples`` applies it to an event log and returns tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData
from seekrec.data.splits import UserSequences
from seekrec.features.batch import FeatureBatch
from seekrec.features.history import EventIndex, Events, as_events
from seekrec.features.rows import ITEM_ID, SEQ_ITEMS, SEQ_TIMES, TIME, Rows, check_side, table_values
from seekrec.features.spec import FeatureSpec

logger = logging.getLogger(__name__)


class OfflineRows:
    """Raw rows of users or items as of any times, from ``data``'s tables and the events in ``history``.

    ``history`` is what features may look at: pass the training events when building training
    examples, so that held-out events never turn into features (default in ``build_examples``).
    """

    def __init__(self, spec: FeatureSpec, data: InteractionData, history: Events | UserSequences) -> None:
        if len(data.item_ids) != spec.n_items or not np.array_equal(data.item_ids.raw, spec.item_ids.raw):
            raise ValueError(f"the spec was fitted on another item catalog ({spec.n_items} items) than "
                             f"{data.source!r} ({data.n_items} items); fit the spec on this dataset")
        self.spec = spec
        self.data = data
        events = as_events(history)
        self._index = {
            "user": EventIndex.build(events.users, events.items, events.timestamps, data.n_users),
            "item": EventIndex.build(events.items, events.users, events.timestamps, data.n_items),
        }
        self._tables = {}
        for side, table in (("user", data.users), ("item", data.items)):
            n = data.n_users if side == "user" else data.n_items
            self._tables[side] = {s: table_values(table, f"{side}_id", s, n) for s in spec.needs(side).attributes}

    def rows(self, side: str, ids: np.ndarray, times: np.ndarray) -> Rows:
        """Raw rows of ``ids`` (``[B]`` dataset ids; unknown ids give missing features) as of ``times`` ``[B]``."""
        check_side(side)
        ids = np.asarray(ids, dtype=np.int64)
        times = np.broadcast_to(np.asarray(times), ids.shape)
        n = self.data.n_users if side == "user" else self.data.n_items
        known = np.where((ids >= 1) & (ids <= n), ids, 0)
        needs = self.spec.needs(side)
        rows: Rows = {TIME: np.array(times)}
        if side == "item":
            rows[ITEM_ID] = known
        for source, lookup in self._tables[side].items():
            rows[source] = lookup[known]
        index = self._index[side]
        if needs.sequence_len:
            rows[SEQ_ITEMS], rows[SEQ_TIMES] = index.last_before(known, rows[TIME], needs.sequence_len)
        for name, windows in needs.windows:
            rows[name] = index.window_counts(known, rows[TIME], windows)
        return rows

    def user_rows(self, users: np.ndarray, times: np.ndarray) -> Rows:
        return self.rows("user", users, times)

    def item_rows(self, items: np.ndarray, times: np.ndarray) -> Rows:
        return self.rows("item", items, times)

    def features(self, side: str, ids: np.ndarray, times: np.ndarray) -> FeatureBatch:
        """``spec.transform`` of ``rows``: the features a model sees for these ids at these times."""
        return self.spec.transform(side, self.rows(side, ids, times))


@dataclass
class Examples:
    """``E`` events with their user features and item features as of each event's time."""

    users: Tensor  # [E] long dataset user ids
    items: Tensor  # [E] long dataset item ids (the target / candidate)
    timestamps: Tensor  # [E] long unix seconds
    user: FeatureBatch  # E rows
    item: FeatureBatch  # E rows

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def index(self, rows: Tensor) -> Examples:
        """The examples at ``rows`` (``[B]`` long), e.g. one shuffled minibatch."""
        return Examples(self.users[rows], self.items[rows], self.timestamps[rows], self.user.index(rows),
                        self.item.index(rows))

    def to(self, device: torch.device | str) -> Examples:
        return Examples(self.users.to(device), self.items.to(device), self.timestamps.to(device),
                        self.user.to(device), self.item.to(device))


def build_examples(spec: FeatureSpec, data: InteractionData, events: Events | UserSequences,
                   history: Events | UserSequences | None = None) -> Examples:
    """Features of each event's user and item as of the event (only strictly earlier ``history``).

    ``history`` defaults to ``events`` itself: each training event then sees the training events
    before it. Pass a larger history (training + validation events) to build the examples of
    held-out targets.
    """
    start = time.perf_counter()
    events = as_events(events)
    rows = OfflineRows(spec, data, events if history is None else history)
    examples = Examples(
        torch.from_numpy(events.users.copy()), torch.from_numpy(events.items.copy()),
        torch.from_numpy(events.timestamps.copy()),
        rows.features("user", events.users, events.timestamps),
        rows.features("item", events.items, events.timestamps),
    )
    logger.info("built %d examples in %.2fs", len(examples), time.perf_counter() - start)
    return examples
