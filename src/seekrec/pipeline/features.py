"""Feature plumbing the stages share: held-out targets with their times, item column views, catalogs.

Evaluation sets (``EvalSet``) hold each user's visible history and target item but not the target's
time, which the feature models need ("user features as of the moment of the target"). The target is
the event right after the visible history in the user's time-ordered sequence, so its time is read
back from the dataset's events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split, UserSequences
from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.features.behaviour import WindowCountColumn
from seekrec.features.examples import OfflineRows
from seekrec.features.history import Events
from seekrec.features.rows import ITEM_ID, TIME, Rows, object_array
from seekrec.features.spec import FeatureSpec
from seekrec.models.layers.features import with_item_id, with_item_ids

ITEM_ID_COLUMN = "item_id"


@dataclass(frozen=True)
class HeldOut:
    """The held-out targets of one evaluation set, with the time their features are taken at.

    ``as_of`` is one second after the target's timestamp: rows count events strictly before it, so
    every visible event, including those logged in the same second as the target (44% of ml-100k's
    targets share their second with the previous rating), reaches the features, as it reaches the
    sequence models. The target itself is not in ``history``, so nothing leaks.
    """

    users: np.ndarray  # [M] user ids
    targets: np.ndarray  # [M] item ids
    as_of: np.ndarray  # [M] unix seconds
    history: UserSequences  # what may be seen: training events (valid), training + validation (test)

    def __len__(self) -> int:
        return len(self.users)

    def rows(self, spec: FeatureSpec, data: InteractionData) -> OfflineRows:
        """Offline rows over exactly the visible history."""
        return OfflineRows(spec, data, self.history)

    def seen(self) -> list[np.ndarray]:
        """Each user's visible items (what the pipeline must not recommend again)."""
        return [self.history.row(int(u)) for u in self.users]


def held_out(data: InteractionData, split: Split, which: str) -> HeldOut:
    """The targets of ``split.valid`` or ``split.test`` with their times, read from ``data``'s events."""
    eval_set = split.eval_set(which)
    users, items, timestamps = data.interactions()
    seqs = UserSequences.from_interactions(users, items, timestamps, data.n_users)
    position = seqs.offsets[eval_set.users] + eval_set.history.lengths()[eval_set.users]
    if np.any(position >= seqs.offsets[eval_set.users + 1]) or not np.array_equal(seqs.items[position],
                                                                                     eval_set.targets):
        raise ValueError(f"the {which} targets are not the events after each user's visible history; "
                         "pass the split that was made from this dataset")
    return HeldOut(eval_set.users, eval_set.targets, seqs.timestamps[position] + 1, eval_set.history)


def item_counts(events: Events | UserSequences, n_items: int) -> Tensor:
    """``[N + 1]`` float64 training frequency of each item (log-Q correction, popularity sampling)."""
    items = events.items
    return torch.from_numpy(np.bincount(items, minlength=n_items + 1).astype(np.float64))


@dataclass(frozen=True)
class ItemView:
    """The item side one model reads: the spec's item schema plus the id column, minus some columns.

    ``select`` cuts a full item ``FeatureBatch`` (spec columns + ``item_id``) down to this view, so
    every stage can share one catalog whatever columns each model dropped.
    """

    schema: FeatureSchema
    dropped: tuple[str, ...]
    dense_index: tuple[int, ...]  # positions of the kept dense columns in the full batch

    @classmethod
    def of(cls, spec: FeatureSpec, drop: Sequence[str] = ()) -> ItemView:
        full = with_item_id(spec.schema("item"), ITEM_ID_COLUMN)
        names = [c.name for c in spec.columns("item")]
        unknown = sorted(set(drop) - set(names))
        if unknown:
            raise ValueError(f"cannot drop item columns {unknown}: the feature spec's item columns are {names}")
        categorical, dense, text_dim = set(), set(), full.text_dim
        for name in drop:
            part = spec.column("item", name).schema()
            categorical |= {n for n, _ in part.categorical}
            dense |= set(part.dense)
            text_dim = 0 if part.text_dim else text_dim
        schema = replace(full, categorical=tuple((n, c) for n, c in full.categorical if n not in categorical),
                         dense=tuple(n for n in full.dense if n not in dense), text_dim=text_dim)
        return cls(schema, tuple(drop), tuple(full.dense.index(n) for n in schema.dense))

    def select(self, batch: FeatureBatch) -> FeatureBatch:
        """The columns of ``batch`` this view keeps (``batch``: full item rows with ``item_id``)."""
        names = [n for n, _ in self.schema.categorical]
        missing = [n for n in names if n not in batch.categorical]
        if missing:
            raise ValueError(f"the item batch lacks columns {missing}; build it with the spec and with_item_ids")
        dense = None
        if self.schema.dense:
            if batch.dense is None:
                raise ValueError(f"the item batch has no dense values but the view reads {self.schema.dense}")
            dense = batch.dense[:, list(self.dense_index)]
        return FeatureBatch({n: batch.categorical[n] for n in names}, dense,
                            batch.text if self.schema.text_dim else None)


def item_catalog(spec: FeatureSpec, rows: OfflineRows, as_of: float) -> FeatureBatch:
    """Item features of ids ``0..N`` (row i = item i, with ``item_id``) as of ``as_of``."""
    ids = np.arange(spec.n_items + 1)
    features = rows.features("item", ids, np.full(len(ids), as_of, dtype=np.int64))
    return with_item_ids(features, torch.from_numpy(ids))


def has_time_varying(spec: FeatureSpec, view: ItemView) -> bool:
    """Whether the view keeps an item column whose value changes with time (window counts)."""
    return any(isinstance(c, WindowCountColumn) and c.name not in view.dropped for c in spec.columns("item"))


def new_item_features(spec: FeatureSpec, records: Sequence[Mapping[str, Any]], now: float) -> FeatureBatch:
    """Item features of items the spec has never seen, from their attributes alone (cold start).

    ``records``: one mapping per item of table columns, e.g. ``{"title": "Orbit Galaxy", "genres":
    ["Sci-Fi"]}``; absent attributes are missing. Text is embedded on the spot by the spec's fitted
    text column, the id is 0 (unknown) and window counts are 0. The feature store gives the same rows
    for an id it holds attributes of (``store.put_attributes`` + ``store.item_features``).
    """
    b = len(records)
    needs = spec.needs("item")
    rows: Rows = {TIME: np.full(b, float(now)), ITEM_ID: np.zeros(b, dtype=np.int64)}
    for source in needs.attributes:
        rows[source] = object_array(record.get(source) for record in records)
    for name, windows in needs.windows:
        rows[name] = np.zeros((b, len(windows)), dtype=np.int64)
    return spec.transform("item", rows)
