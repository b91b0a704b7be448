"""The history tail: the server's user histories, kept level with the event log.

Events for items no loaded version knows are skipped (no model could score them) and remembered;
when a new version brings such items, histories are rebuilt off the loop (dataset, then the log
replayed) so those clicks count from then on. Every applied event also goes to the predictors'
``observe`` (pipelines keep their own feature store).

Replicas. Several servers append to one shared log; each applies its own batches at once and the
others' on the next poll (``catch_up``), or, for read-your-writes, before a request (``sync``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from seekrec.data.vocab import Catalog
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.online.histories import HistoryEvent, UserHistories
from seekrec.serving.predictor import REPLAY_CHUNK, Predictor, replay_log

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # how often a long start-up replay logs its progress


class HistoryTail:
    """User histories over the server ``catalog``'s ids, caught up with the event log in offset order.

    ``lock`` serialises every change of the histories; holders may also swap models under it, so no
    event slips between a model's own replay and the swap (see ``ServingState``)."""

    def __init__(self, catalog: Catalog, history_len: int, data_dir: Path | None,
                 observers: Callable[[], Iterable[Predictor]], max_users: int | None = None,
                 on_sync: Callable[[], None] | None = None) -> None:
        self.catalog, self.history_len, self.data_dir, self.observers = catalog, history_len, data_dir, observers
        self.on_sync = on_sync  # told of every read ``sync`` makes (a metric)
        self.max_users = max_users  # memory bound: least recently active users beyond it are forgotten
        self.histories: UserHistories | None = None
        self.event_log: EventLog | None = None
        self.lock = asyncio.Lock()
        self._unknown_items: set[str] = set()  # raw ids in applied events that no loaded version knew
        self.resets = 0  # times the log was seen going backwards (restarted empty)
        self._next_sync: asyncio.Future[BaseException | None] | None = None  # the read callers join now
        self._syncer: asyncio.Task[None] | None = None
        # told, on the loop thread and with no await in between, of every history change: the users of each
        # applied batch, and a rebuild of all of them (the response cache invalidates on these)
        self.on_applied: Callable[[Iterable[str]], None] | None = None
        self.on_rebuilt: Callable[[], None] | None = None

    def get(self, user_id: str) -> list[int]:
        """The user's recent items as server ids, oldest first (call only once ``histories`` exist)."""
        assert self.histories is not None  # callers check readiness first
        return self.histories.get(user_id)

    def events(self, user_id: str) -> list[HistoryEvent]:
        """The user's recent ``(server id, unix seconds, value)`` events, oldest first (once ``histories`` exist)."""
        assert self.histories is not None  # callers check readiness first
        return self.histories.events(user_id)

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
            if own:
                end = own[-1].offset
                # our batch got offsets already applied: an idempotent retry (the log still reaches past
                # them), or a log that started again (its end is below what was applied)
                if end <= histories.offset and await asyncio.to_thread(log_.end_offset) < histories.offset:
                    self._restarted(end)
            else:
                end = await asyncio.to_thread(log_.end_offset)
                if end < histories.offset:
                    self._restarted(end)
            while histories.offset < end:
                chunk = await asyncio.to_thread(log_.read, histories.offset, REPLAY_CHUNK)
                if not chunk:
                    break
                self._apply(chunk)

    async def sync(self) -> None:
        """Return once the histories hold every event in the log when this call began, whichever
        process appended it: read-your-writes across replicas sharing one log.

        Callers share reads, like a group commit: a caller joins the read that has not started yet,
        never one under way (that one may have missed an event acknowledged just before the caller
        came), so one log read serves every request that arrived while the previous read ran. An
        unreachable log raises ``EventLogUnavailableError``; cancelling a caller leaves the read going."""
        if self.histories is None or self.event_log is None:
            return  # the start-up replay will read these events
        if self._next_sync is None:
            self._next_sync = asyncio.get_running_loop().create_future()
            if self._syncer is None or self._syncer.done():
                self._syncer = asyncio.create_task(self._run_syncs(), name="history-sync")
        error = await asyncio.shield(self._next_sync)
        if error is not None:
            raise error

    async def _run_syncs(self) -> None:
        """Serve the waiting callers one read at a time until none is waiting. A failure is handed to
        that read's callers as a result (not the future's exception: nobody may be left to retrieve it)."""
        while (waiting := self._next_sync) is not None:
            self._next_sync = None  # callers from now on wait for the next read
            try:
                await self._read_new()
            except asyncio.CancelledError:
                waiting.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - each waiting caller re-raises it
                waiting.set_result(exc)
            else:
                waiting.set_result(None)

    async def _read_new(self) -> None:
        """Apply whatever the log holds past the histories: one read when there is nothing new."""
        async with self.lock:
            histories, log_ = self.histories, self.event_log
            assert histories is not None and log_ is not None  # sync checked; neither goes back to None
            if self.on_sync is not None:
                self.on_sync()
            while True:
                chunk = await log_.aread(histories.offset, REPLAY_CHUNK)
                if chunk:
                    self._apply(chunk)
                if len(chunk) < REPLAY_CHUNK:
                    return

    async def stop(self) -> None:
        """Cancel the read serving ``sync`` callers (server shutdown)."""
        if self._syncer is not None and not self._syncer.done():
            self._syncer.cancel()
            try:
                await self._syncer
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        if self._next_sync is not None and not self._next_sync.done():
            self._next_sync.cancel()

    def _restarted(self, end: int) -> None:
        """The log's end fell below the position applied (Redis restarted without its data, a log file
        replaced): its offsets start again at 1. Histories keep what they learned and follow the new
        log from its start; without this every new event would be skipped as already applied."""
        assert self.histories is not None
        self.resets += 1
        log.error("event log %s went backwards (end offset %d, histories at %d): it was reset or restarted "
                  "empty; histories keep their items and follow the new log from offset 1. Events acknowledged "
                  "before the reset are gone from the log (restart the online trainer from its checkpoint)",
                  self.event_log, end, self.histories.offset)
        self.histories.offset = 0
        for predictor in self.observers():  # e.g. a pipeline's feature store, which skips offsets it applied
            predictor.follow_restarted_log()

    def needs_rebuild(self, new_raws: Iterable[str]) -> bool:
        """On first start, or when items that skipped clicks were about have become known."""
        return self.histories is None or bool(self._unknown_items.intersection(new_raws))

    async def rebuild(self) -> None:
        """Rebuild off the loop; events applied meanwhile go to the old histories and reach the new
        ones through the next ``catch_up``."""
        histories, unknown = await asyncio.to_thread(self._build)
        async with self.lock:
            self.histories, self._unknown_items = histories, unknown
            if self.on_rebuilt is not None:
                self.on_rebuilt()

    def _apply(self, events: Sequence[LoggedEvent]) -> None:
        assert self.histories is not None
        _apply(self.histories, events, self.catalog, self._unknown_items)
        if self.on_applied is not None:
            self.on_applied(e.user_id for e in events)
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
        end, started, reported = self.event_log.end_offset(), time.monotonic(), time.monotonic()

        def apply(chunk: list[LoggedEvent]) -> None:
            nonlocal reported
            _apply(histories, chunk, catalog, unknown)
            if time.monotonic() - reported >= PROGRESS_EVERY_S:  # a long replay says how far it is
                reported = time.monotonic()
                log.info("replaying the event log: offset %d of %d (%.0f%%, %.0f s)", histories.offset, end,
                         100 * histories.offset / max(end, 1), reported - started)

        replay_log(self.event_log, lambda: histories.offset, apply)
        log.info("histories of %d users, event log replayed to offset %d in %.1f s", len(histories),
                 histories.offset, time.monotonic() - started)
        return histories, unknown


def _apply(histories: UserHistories, events: Sequence[LoggedEvent], catalog: Catalog, unknown: set[str]) -> None:
    """``histories.apply`` without adding items, remembering the raw ids it had to skip."""
    unknown.update(e.item_id for e in events if e.offset > histories.offset and e.item_id not in catalog.items)
    histories.apply(events, catalog, add_items=False)
