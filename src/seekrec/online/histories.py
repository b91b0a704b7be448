"""Every user's recent events (item, time, value), kept current from the offline dataset and the live event log.

The server and the online trainer both hold one; each rebuilds it at start-up from the same
sources (the prepared dataset, then the event log replayed in offset order), so it is derived
state that never needs its own persistence.
"""

from __future__ import annotations

import itertools

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from operator import itemgetter
from pathlib import Path

import numpy as np
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.sequences import SequenceContext
from seekrec.data.splits import UserSequences
from seekrec.data.vocab import Catalog
from seekrec.online.event_log import LoggedEvent

# What an event naming an item outside the catalog does, for the server (POST /events) and the online
# trainer alike: "accept" logs it and the trainer grows its item table for it; "reject" refuses it at
# the server and the trainer skips it, so no client can grow the item table (and the model with it).
UNKNOWN_ITEM_POLICIES = ("accept", "reject")
_ITEM = itemgetter(0)
# one event of a history: (item id, unix seconds, value); a tuple per event is the compact choice
# in CPython next to per-user parallel deques, whose empty blocks cost ~0.6 kB each
HistoryEvent = tuple[int, int, float]


class UserHistories:
    """Raw user id -> the last ``max_len`` events in time order: item id (model ids from ``catalog``), unix
    seconds (int) and value (e.g. a rating), for models with event-time / action inputs.

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
        self._events: OrderedDict[str, deque[HistoryEvent]] = OrderedDict()  # least recently active first
        self.offset = 0  # last event-log offset applied
        self.evicted = 0  # users forgotten to stay within max_users

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, user: object) -> bool:
        return str(user) in self._events

    @classmethod
    def from_dataset(cls, data_dir: str | Path, max_len: int, catalog: Catalog,
                     max_users: int | None = None) -> UserHistories:
        """Histories of every user of a prepared dataset (raw user ids from its manifest), with the events'
        timestamps and values; past ``max_users`` the users whose last interaction is oldest are left out."""
        data = InteractionData.read(data_dir)
        users, items, ts = data.interactions()
        seqs = UserSequences.from_interactions(users, items, ts, data.n_users, values=data.event_values())
        assert seqs.values is not None  # given above
        raw_items = data.item_ids.raw
        ids = catalog.items.encode([str(r) for r in raw_items])  # dataset id -> catalog id
        out = cls(max_len, max_users)
        last_ts = np.full(data.n_users + 1, np.iinfo(np.int64).min)
        np.maximum.at(last_ts, users, ts)
        order = np.argsort(last_ts[1:], kind="stable") + 1  # user ids, least recently active first
        raw_users = data.user_ids.raw.tolist()
        for uid in order.tolist():
            lo, hi = int(seqs.offsets[uid]), int(seqs.offsets[uid + 1])
            lo = max(lo, hi - max_len)
            row = ids[seqs.items[lo:hi] - 1]
            events = zip(row.tolist(), seqs.timestamps[lo:hi].tolist(), seqs.values[lo:hi].tolist())
            out._events[str(raw_users[uid - 1])] = deque((e for e in events if e[0] > 0), maxlen=max_len)
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
            self.append(event.user_id, item, event.timestamp, event.value)
            applied.append((event.user_id, item))
        return applied

    def append(self, user: str, item: int, timestamp: float = 0, value: float = 1.0) -> None:
        """Add an event of ``item`` at ``timestamp`` (unix seconds, floored to an int as datasets store them)
        with ``value`` to ``user``'s history, making the user the most recently active."""
        key = str(user)
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque(maxlen=self.max_len)
            self._evict()
        else:
            self._events.move_to_end(key)
        events.append((int(item), int(timestamp), float(value)))

    def _evict(self) -> None:
        while self.max_users is not None and len(self._events) > self.max_users:
            self._events.popitem(last=False)
            self.evicted += 1

    def recent(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most recently active users, most recent first, with how many events each one keeps."""
        return [(user, len(events)) for user, events in itertools.islice(reversed(self._events.items()), n)]

    def get(self, user: object) -> list[int]:
        """The user's recent item ids, oldest first; empty for an unknown user."""
        return list(map(_ITEM, self._events.get(str(user), ())))

    def events(self, user: object) -> list[HistoryEvent]:
        """The user's recent ``(item id, unix seconds, value)`` events, oldest first; empty for an unknown user."""
        return list(self._events.get(str(user), ()))

    def last(self, user: object) -> HistoryEvent | None:
        """The user's most recent event; None for an unknown user."""
        events = self._events.get(str(user))
        return events[-1] if events else None

    def padded(self, users: Sequence[object], max_len: int | None = None) -> torch.Tensor:
        """``[B, L]`` left-padded recent items of ``users`` (L = ``max_len`` or this store's)."""
        width = max_len or self.max_len
        out = np.zeros((len(users), width), dtype=np.int64)
        for row, user in enumerate(users):
            items = self.get(user)[-width:]
            if items:
                out[row, width - len(items) :] = items
        return torch.from_numpy(out)

    def padded_with_context(self, users: Sequence[object], query_time: int,
                            max_len: int | None = None) -> tuple[torch.Tensor, SequenceContext]:
        """``[B, L]`` left-padded recent items of ``users`` and their ``SequenceContext``: the events' times
        and values, as query time of each position the next event's time and ``query_time`` (the request's
        unix seconds) at the last, 0 at padding (``SequenceContext.of_history``, as evaluation builds it)."""
        width = max_len or self.max_len
        items = np.zeros((len(users), width), dtype=np.int64)
        times = np.zeros((len(users), width), dtype=np.int64)
        values = np.zeros((len(users), width), dtype=np.float32)
        for row, user in enumerate(users):
            recent = self.events(user)[-width:]
            if recent:
                columns = list(zip(*recent))
                items[row, width - len(recent) :] = columns[0]
                times[row, width - len(recent) :] = columns[1]
                values[row, width - len(recent) :] = columns[2]
        return torch.from_numpy(items), SequenceContext.of_history(items, times, values, int(query_time))
