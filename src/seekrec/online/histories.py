"""Every user's recent items, kept current from the offline dataset and the live event log.

The server and the online trainer both hold one; each rebuilds it at start-up from the same
sources (the prepared dataset, then the event log replayed in offset order), so it is derived
state that never needs its own persistence.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import UserSequences
from seekrec.data.vocab import Catalog
from seekrec.online.event_log import LoggedEvent

# What an event naming an item outside the catalog does, for the server (POST /events) and the online
# trainer alike: "accept" logs it and the trainer grows its item table for it; "reject" refuses it at
# the server and the trainer skips it, so no client can grow the item table (and the model with it).
UNKNOWN_ITEM_POLICIES = ("accept", "reject")


class UserHistories:
    """Raw user id -> the last ``max_len`` item ids (model ids from ``catalog``) in time order.

    At most ``max_users`` users are kept (none: no cap): any client can invent user ids, so past the
    cap the least recently active user is forgotten (``evicted`` counts them) rather than memory growing
    with every new id. A forgotten user who comes back starts with an empty history.
    """

    def __init__(self, max_len: int, max_users: int | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if max_users is not None and max_users < 1:
            raise ValueError(f"max_users must be >= 1 or None (no cap), got {max_users}")
        self.max_len, self.max_users = max_len, max_users
        self._items: OrderedDict[str, deque[int]] = OrderedDict()  # least recently active first
        self.offset = 0  # last event-log offset applied
        self.evicted = 0  # users forgotten to stay within max_users

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, user: object) -> bool:
        return str(user) in self._items

    @classmethod
    def from_dataset(cls, data_dir: str | Path, max_len: int, catalog: Catalog,
                     max_users: int | None = None) -> UserHistories:
        """Histories of every user of a prepared dataset (raw user ids from its manifest); past
        ``max_users`` the users whose last interaction is oldest are left out."""
        data = InteractionData.read(data_dir)
        users, items, ts = data.interactions()
        seqs = UserSequences.from_interactions(users, items, ts, data.n_users)
        raw_items = data.item_ids.raw
        ids = catalog.items.encode([str(r) for r in raw_items])  # dataset id -> catalog id
        out = cls(max_len, max_users)
        last_ts = np.full(data.n_users + 1, np.iinfo(np.int64).min)
        np.maximum.at(last_ts, users, ts)
        order = np.argsort(last_ts[1:], kind="stable") + 1  # user ids, least recently active first
        raw_users = data.user_ids.raw.tolist()
        for uid in order.tolist():
            row = seqs.row(uid)[-max_len:]
            out._items[str(raw_users[uid - 1])] = deque((int(i) for i in ids[row - 1] if i > 0), maxlen=max_len)
            out._evict()
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
        """Add ``item`` to ``user``'s history, making the user the most recently active."""
        key = str(user)
        items = self._items.get(key)
        if items is None:
            items = self._items[key] = deque(maxlen=self.max_len)
            self._evict()
        else:
            self._items.move_to_end(key)
        items.append(int(item))

    def _evict(self) -> None:
        while self.max_users is not None and len(self._items) > self.max_users:
            self._items.popitem(last=False)
            self.evicted += 1

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
