"""Every user's recent items, kept current from the offline dataset and the live event log.

The server and the online trainer both hold one; each rebuilds it at start-up from the same
sources (the prepared dataset, then the event log replayed in offset order), so it is derived
state that never needs its own persistence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import UserSequences
from seekrec.data.vocab import Catalog
from seekrec.online.event_log import LoggedEvent


class UserHistories:
    """Raw user id -> the last ``max_len`` item ids (model ids from ``catalog``) in time order."""

    def __init__(self, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self._items: dict[str, deque[int]] = {}
        self.offset = 0  # last event-log offset applied

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, user: object) -> bool:
        return str(user) in self._items

    @classmethod
    def from_dataset(cls, data_dir: str | Path, max_len: int, catalog: Catalog) -> UserHistories:
        """Histories of every user of a prepared dataset (raw user ids from its manifest)."""
        data = InteractionData.read(data_dir)
        users, items, ts = data.interactions()
        seqs = UserSequences.from_interactions(users, items, ts, data.n_users)
        raw_items = data.item_ids.raw
        ids = catalog.items.encode([str(r) for r in raw_items])  # dataset id -> catalog id
        out = cls(max_len)
        for uid, raw_user in enumerate(data.user_ids.raw.tolist(), start=1):
            row = seqs.row(uid)[-max_len:]
            out._items[str(raw_user)] = deque((int(i) for i in ids[row - 1] if i > 0), maxlen=max_len)
        return out

    def apply(self, events: Iterable[LoggedEvent], catalog: Catalog, add_items: bool = True) -> list[tuple[str, int]]:
        """Append events in offset order; returns ``(user, item id)`` of each event applied.

        Unknown items are added to ``catalog`` when ``add_items`` (the online trainer grows the
        model for them); otherwise they are skipped (a server cannot score them yet). Events at or
        below the last applied offset are ignored, so replaying a log tail twice is harmless.
        """
        applied = []
        for event in events:
            if event.offset <= self.offset:
                continue
            self.offset = event.offset
            item = catalog.add(event.item_id) if add_items else catalog.items.get(event.item_id)
            if item == 0:
                continue
            catalog.record(item)
            self.append(event.user_id, item)
            applied.append((event.user_id, item))
        return applied

    def append(self, user: str, item: int) -> None:
        self._items.setdefault(str(user), deque(maxlen=self.max_len)).append(int(item))

    def get(self, user: object) -> list[int]:
        """The user's recent item ids, oldest first; empty for an unknown user."""
        return list(self._items.get(str(user), ()))

    def padded(self, users: Sequence[object], max_len: int | None = None) -> torch.Tensor:
        """``[B, L]`` left-padded recent items of ``users`` (L = ``max_len`` or this store's)."""
        width = max_len or self.max_len
        out = np.zeros((len(users), width), dtype=np.int64)
        for row, user in enumerate(users):
            items = self.get(user)[-width:]
            if items:
                out[row, width - len(items) :] = items
        return torch.from_numpy(out)
