"""The history tail: the server's user histories, kept level with the event log.

Events for items no loaded version knows are skipped (no model could score them) and remembered;
when a new version brings such items, histories are rebuilt off the loop (dataset, then the log
replayed) so those clicks count from then on. Every applied event also goes to the predictors'
``observe`` (pipelines keep their own feature store).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from seekrec.data.vocab import Catalog
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.online.histories import UserHistories
from seekrec.serving.predictor import REPLAY_CHUNK, Predictor, replay_log

log = logging.getLogger(__name__)


class HistoryTail:
    """User histories over the server ``catalog``'s ids, caught up with the event log in offset order.

    ``lock`` serialises every change of the histories; holders may also swap models under it, so no
    event slips between a model's own replay and the swap (see ``ServingState``)."""

    def __init__(self, catalog: Catalog, history_len: int, data_dir: Path | None,
                 observers: Callable[[], Iterable[Predictor]], max_users: int | None = None) -> None:
        self.catalog, self.history_len, self.data_dir, self.observers = catalog, history_len, data_dir, observers
        self.max_users = max_users  # memory bound: least recently active users beyond it are forgotten
        self.histories: UserHistories | None = None
        self.event_log: EventLog | None = None
        self.lock = asyncio.Lock()
        self._unknown_items: set[str] = set()  # raw ids in applied events that no loaded version knew

    def get(self, user_id: str) -> list[int]:
        """The user's recent items as server ids, oldest first (call only once ``histories`` exist)."""
        assert self.histories is not None  # callers check readiness first
        return self.histories.get(user_id)

    async def catch_up(self, own: Sequence[LoggedEvent] = ()) -> None:
        """Apply every logged event not yet in the histories, in offset order.

        ``own``: a batch this process just appended; applied directly when nothing precedes it,
        otherwise the gap (events of concurrent requests or other processes) is read from the log.
        """
        if self.histories is None or self.event_log is None:
            return  # the start-up replay will read these events
        async with self.lock:
            histories, log_ = self.histories, self.event_log
            if own and own[0].offset == histories.offset + 1:
                self._apply(own)
                return
            end = own[-1].offset if own else await asyncio.to_thread(log_.end_offset)
            while histories.offset < end:
                chunk = await asyncio.to_thread(log_.read, histories.offset, REPLAY_CHUNK)
                if not chunk:
                    break
                self._apply(chunk)

    def needs_rebuild(self, new_raws: Iterable[str]) -> bool:
        """On first start, or when items that skipped clicks were about have become known."""
        return self.histories is None or bool(self._unknown_items.intersection(new_raws))

    async def rebuild(self) -> None:
        """Rebuild off the loop; events applied meanwhile go to the old histories and reach the new
        ones through the next ``catch_up``."""
        histories, unknown = await asyncio.to_thread(self._build)
        async with self.lock:
            self.histories, self._unknown_items = histories, unknown

    def _apply(self, events: Sequence[LoggedEvent]) -> None:
        assert self.histories is not None
        _apply(self.histories, events, self.catalog, self._unknown_items)
        for predictor in self.observers():
            predictor.observe(events)

    def _build(self) -> tuple[UserHistories, set[str]]:
        """Worker thread: histories of the dataset (if any), then the event log replayed to its end;
        also the raw ids of skipped unknown items. Counts go to a private copy: the loop thread may be
        applying events to the live catalog meanwhile."""
        assert self.event_log is not None  # opened before any model is installed
        catalog, unknown = Catalog(self.catalog.items, self.catalog.counts.copy()), set()
        if self.data_dir is not None:
            histories = UserHistories.from_dataset(self.data_dir, self.history_len, catalog, self.max_users)
        else:
            histories = UserHistories(self.history_len, self.max_users)
        replay_log(self.event_log, lambda: histories.offset, lambda chunk: _apply(histories, chunk, catalog, unknown))
        log.info("histories of %d users, event log replayed to offset %d", len(histories), histories.offset)
        return histories, unknown


def _apply(histories: UserHistories, events: Sequence[LoggedEvent], catalog: Catalog, unknown: set[str]) -> None:
    """``histories.apply`` without adding items, remembering the raw ids it had to skip."""
    unknown.update(e.item_id for e in events if e.offset > histories.offset and e.item_id not in catalog.items)
    histories.apply(events, catalog, add_items=False)
