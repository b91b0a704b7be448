"""What one online step needs besides the shared ``TrainStep``: examples from events (with a replay
buffer of recent ones), and growing the item table without throwing away the optimiser's memory.

Why examples target only the last position: each new event is one transition (history -> item) and
is trained exactly once as a new example. Targeting every position of the window would retrain the
user's older transitions again with every click and weight long histories ``max_len`` times more
than short ones. Replayed examples have the same shape, so a ``replay_ratio`` r gives replay exactly
r / (1 + r) of the loss, the share that guards against forgetting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.sequences import SeqBatch, SequenceContext
from seekrec.data.vocab import Catalog
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.online.histories import HistoryEvent, UserHistories
from seekrec.training.config import TrainConfig
from seekrec.training.step import build_optimizer


def window_row(history: Sequence[int], target: int, width: int) -> np.ndarray:
    """``[L + 1]`` left-padded row: the last ``L = width - 1`` items of ``history``, then ``target``."""
    row = np.zeros(width, dtype=np.int64)
    items = list(history[-(width - 1) :]) + [target]
    row[width - len(items) :] = items
    return row


@dataclass
class ExampleRows:
    """Example windows ``[E, L + 1]``, left-padded, the target last: the item ids and, for a model with
    event-time / action inputs, the events' unix seconds (int64) and values (float32) aligned with them
    (None for the others, which keep the memory of id-only rows)."""

    items: torch.Tensor  # [E, L + 1]
    times: torch.Tensor | None = None  # [E, L + 1] int64, 0 at padding
    values: torch.Tensor | None = None  # [E, L + 1] float32, 0 at padding

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def empty(cls, width: int, with_context: bool) -> ExampleRows:
        return cls(torch.zeros(0, width, dtype=torch.long), *((torch.zeros(0, width, dtype=torch.long),
                   torch.zeros(0, width, dtype=torch.float32)) if with_context else (None, None)))

    @classmethod
    def of_windows(cls, windows: Sequence[Sequence[HistoryEvent]], width: int, with_context: bool) -> ExampleRows:
        """Rows of ``windows`` (each the user's events before the target event, then it; the last
        ``width`` are kept); times and values only ``with_context``."""
        if not windows:
            return cls.empty(width, with_context)
        items = np.zeros((len(windows), width), dtype=np.int64)
        times = np.zeros((len(windows), width), dtype=np.int64) if with_context else None
        values = np.zeros((len(windows), width), dtype=np.float32) if with_context else None
        for row, window in enumerate(windows):
            recent = list(window[-width:])
            columns = list(zip(*recent))
            items[row, width - len(recent) :] = columns[0]
            if times is not None and values is not None:
                times[row, width - len(recent) :] = columns[1]
                values[row, width - len(recent) :] = columns[2]
        return cls(torch.from_numpy(items), None if times is None else torch.from_numpy(times),
                   None if values is None else torch.from_numpy(values))

    def select(self, index: torch.Tensor | slice) -> ExampleRows:
        return ExampleRows(self.items[index], None if self.times is None else self.times[index],
                           None if self.values is None else self.values[index])

    def cat(self, other: ExampleRows) -> ExampleRows:
        def join(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.cat([a, b])

        return ExampleRows(torch.cat([self.items, other.items]), join(self.times, other.times),
                           join(self.values, other.values))


def consume_events(
    events: Sequence[LoggedEvent], histories: UserHistories, catalog: Catalog, width: int, add_items: bool = True,
    *, with_context: bool = False, keep: Callable[[str], bool] | None = None,
) -> tuple[ExampleRows, float | None]:
    """Apply ``events`` (new items join ``catalog`` when ``add_items``, else their events are skipped)
    and return one example row per event (only for users ``keep`` accepts, when given: every event still
    updates the histories and the catalog, so item ids stay those of an unfiltered replay).

    Returns ``rows [E', L + 1]`` (the user's window before the event, then the event; with times and values
    when ``with_context``) and the largest timestamp applied. A user's first event has no history to
    condition on, so it updates the histories but yields no row. Offsets already applied are skipped, which
    makes the start-up replay of the log and the live loop one code path.
    """
    windows: list[list[HistoryEvent]] = []
    max_ts: float | None = None
    for event in events:
        before = histories.events(event.user_id)
        applied = histories.apply([event], catalog, add_items=add_items)
        if not applied:
            continue
        max_ts = event.timestamp if max_ts is None else max(max_ts, event.timestamp)
        latest = histories.last(event.user_id)  # the event as the histories keep it
        if before and latest is not None and (keep is None or keep(event.user_id)):
            windows.append([*before, latest])
    return ExampleRows.of_windows(windows, width, with_context), max_ts


def rows_to_batch(rows: ExampleRows) -> SeqBatch:
    """``[B, L + 1]`` rows -> a ``SeqBatch`` whose only target is the last position of each row.

    With times, the batch's context is built as ``SequenceDataset.batch`` builds it offline: the inputs'
    times and values, and as query time of each position the time of the event after it (so the target's
    time at the last position). The next-item task does not read user ids, and online users are raw strings
    without a model id, so ``user_ids`` is zeros.
    """
    inputs = rows.items[:, :-1].contiguous()  # [B, L]
    targets = torch.zeros_like(inputs)
    targets[:, -1] = rows.items[:, -1]
    context = None
    if rows.times is not None:
        query_times = rows.times[:, 1:].masked_fill(inputs == 0, 0).contiguous()
        values = None if rows.values is None else rows.values[:, :-1].contiguous()
        context = SequenceContext(rows.times[:, :-1].contiguous(), query_times, values)
    return SeqBatch(inputs, targets, torch.zeros(len(rows), dtype=torch.long), context)


class ReplayBuffer:
    """The most recent ``capacity`` example rows (a ring), sampled with replacement.

    The buffer is derived state: the trainer refills it at start-up from the dataset and the log
    replayed up to its checkpoint, so it never needs to be saved and restarts see the same buffer.
    """

    def __init__(self, capacity: int, width: int, *, with_context: bool = False) -> None:
        if capacity < 1 or width < 2:
            raise ValueError(f"replay capacity must be >= 1 and width >= 2, got {capacity}, {width}")
        empty = ExampleRows.empty(width, with_context)
        self.rows = ExampleRows(*(None if t is None else t.new_zeros(capacity, width)
                                  for t in (empty.items, empty.times, empty.values)))  # [M, L + 1] each
        self.size = 0
        self.next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, rows: ExampleRows) -> None:
        """Add ``rows [E, L + 1]``, overwriting the oldest rows once full."""
        capacity = len(self.rows)
        rows = rows.select(slice(-capacity, None))
        index = (self.next + torch.arange(len(rows))) % capacity
        for mine, theirs in ((self.rows.items, rows.items), (self.rows.times, rows.times),
                             (self.rows.values, rows.values)):
            if mine is not None:
                if theirs is None:
                    raise ValueError("this replay buffer keeps event times and values; push rows that have them")
                mine[index] = theirs
        self.next = int((self.next + len(rows)) % capacity)
        self.size = min(capacity, self.size + len(rows))

    def sample(self, n: int, generator: torch.Generator) -> ExampleRows:
        """``[n, L + 1]`` rows drawn uniformly with replacement (none when the buffer is empty)."""
        if n < 1 or self.size == 0:
            return self.rows.select(slice(0, 0))
        return self.rows.select(torch.randint(0, self.size, (n,), generator=generator))


def dataset_rows(data_dir: str | Path, histories: UserHistories, capacity: int, *,
                 with_context: bool = False) -> ExampleRows:
    """Replay rows for the dataset's users, most recently active last, so the buffer starts full of
    what the base model was trained on rather than empty (early online steps would forget it)."""
    data = InteractionData.read(data_dir)
    users, _, ts = data.interactions()
    last_ts = np.full(data.n_users + 1, np.iinfo(np.int64).min)
    np.maximum.at(last_ts, users, ts)
    order = np.argsort(last_ts[1:], kind="stable") + 1  # user ids, least recent first
    windows = []
    for uid in order.tolist()[-capacity:]:
        events = histories.events(str(data.user_ids.raw[uid - 1]))
        if len(events) >= 2:
            windows.append(events)
    return ExampleRows.of_windows(windows, histories.max_len, with_context)


class StreamExamples:
    """State derived from the dataset and the log: catalog, user histories and the replay buffer.

    Never saved: the trainer rebuilds it at start-up (dataset, then the log replayed up to its
    checkpoint), and since that replay is deterministic, new items get the same ids every time.
    """

    def __init__(self, data_dir: str | Path, catalog: Catalog, max_len: int, replay_window: int, *,
                 add_items: bool = True, with_context: bool = False) -> None:
        # add_items False: the "reject" unknown-item policy, events for items outside the catalog are skipped
        self.catalog, self.width, self.add_items = catalog, max_len + 1, add_items
        self.with_context = with_context  # rows carry event times and values (models with event-time inputs)
        # max_len + 1 items per user, so replay rows seeded from the dataset have full-length inputs
        self.histories = UserHistories.from_dataset(data_dir, max_len + 1, catalog)
        self.replay = ReplayBuffer(replay_window, self.width, with_context=with_context)
        self.replay.push(dataset_rows(data_dir, self.histories, replay_window, with_context=with_context))

    @property
    def position(self) -> int:
        """Offset of the last event applied (0: none)."""
        return self.histories.offset

    def catch_up(self, event_log: EventLog, position: int, chunk: int = 10_000,
                 keep: Callable[[str], bool] | None = None) -> None:
        """Apply the log up to ``position`` as the live loop did (replay rows included, of ``keep``'s users)."""
        while self.position < position:
            events = event_log.read(self.position, min(chunk, position - self.position))
            if not events:
                raise ValueError(f"the event log has no events after offset {self.position}, but the checkpoint "
                                 f"is at {position}: is this the log the trainer was reading?")
            self.replay.push(self.consume(events, keep)[0])

    def consume(self, events: Sequence[LoggedEvent],
                keep: Callable[[str], bool] | None = None) -> tuple[ExampleRows, float | None]:
        """``consume_events`` on this state: ``rows [E', L + 1]`` and the largest timestamp."""
        return consume_events(events, self.histories, self.catalog, self.width, self.add_items,
                              with_context=self.with_context, keep=keep)

    def batch(self, rows: ExampleRows, replay_ratio: float, generator: torch.Generator) -> tuple[SeqBatch, int]:
        """New ``rows`` plus ``replay_ratio`` replayed rows each, as one batch; returns it and the replay count.

        The new rows join the buffer after sampling, so a step's replay never repeats its own examples.
        """
        replayed = self.replay.sample(round(replay_ratio * len(rows)), generator)
        self.replay.push(rows)
        return rows_to_batch(rows.cat(replayed)), len(replayed)


def grow_items_keeping_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_items: int, config: TrainConfig
) -> torch.optim.AdamW:
    """Grow ``model``'s item table to ids ``1..n_items``; return a rebuilt AdamW that keeps its state.

    ``grow_items`` replaces the item-table parameter, so the old optimiser points at a dead tensor.
    Moments of unchanged parameters are carried over as they are; those of a grown table are carried
    over row by row, with zero moments for the new rows (AdamW's shared step count keeps their first
    updates at the usual size), so one new item does not reset what the optimiser knows.
    """
    grow = getattr(model, "grow_items", None)
    if grow is None:
        raise TypeError(f"{type(model).__name__} has no grow_items(); it cannot learn items first seen online")
    before = dict(model.named_parameters())
    grow(n_items)
    fresh = build_optimizer(model, config)
    for name, param in model.named_parameters():
        old = before.get(name)
        state = optimizer.state.get(old) if old is not None else None
        if state:
            fresh.state[param] = {key: _pad_rows(value, old.shape, param.shape) for key, value in state.items()}
    return fresh


def _pad_rows(value: object, old_shape: torch.Size, new_shape: torch.Size) -> object:
    if not isinstance(value, torch.Tensor) or value.shape != old_shape or old_shape == new_shape:
        return value  # scalars such as AdamW's step, or a parameter that did not change
    padded = value.new_zeros(new_shape)
    padded[: old_shape[0]] = value
    return padded
