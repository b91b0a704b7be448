"""Training examples for next-item models: left-padded windows over each user's sequence.

All windows are materialised once into one ``[E, L + 1]`` tensor, so a batch is a single index
into it: no per-example Python work and no collate function on the hot path. With ``with_context`` the
events' timestamps and values are windowed the same way, for models with event-time / action inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from seekrec.data.splits import UserSequences, concat_ranges


@dataclass
class SequenceContext:
    """Per-event context of left-padded ``input_ids [B, L]``, the input of models with event-time / action
    inputs (``seekrec.models.layers.context``, which re-exports it).

    ``times [B, L]`` int64: Unix seconds of each input event (0 at padding). ``query_times [B, L]`` int64:
    when the prediction made at position t is requested (training: the timestamp of the target event at
    t; evaluation: the held-out event's timestamp at the last position; serving would be "now").
    ``values [B, L]`` float32 or None: the event value (e.g. a rating), needed by ``action_features``.
    """

    times: torch.Tensor
    query_times: torch.Tensor
    values: torch.Tensor | None = None

    @classmethod
    def of_history(cls, input_ids: np.ndarray, times: np.ndarray, values: np.ndarray | None,
                   last_query_times: np.ndarray | int) -> SequenceContext:
        """The context of left-padded histories ``input_ids [B, L]`` (0 = padding) whose events happened at
        ``times [B, L]`` with ``values [B, L]`` (or None): as query time of each position the next event's
        time, and ``last_query_times`` (``[B]``, or one time for every row: a request's "now") at the last
        position; 0 at padding. Evaluation (the held-out event's time) and serving (the request time) share it."""
        last = np.broadcast_to(np.asarray(last_query_times, dtype=np.int64), (times.shape[0],))
        query = np.concatenate([times[:, 1:], last[:, None]], axis=1).astype(np.int64)
        query[input_ids == 0] = 0
        return cls(torch.from_numpy(np.ascontiguousarray(times, dtype=np.int64)), torch.from_numpy(query),
                   None if values is None else torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SequenceContext:
        values = None if self.values is None else self.values.to(device, non_blocking=non_blocking)
        return SequenceContext(self.times.to(device, non_blocking=non_blocking),
                               self.query_times.to(device, non_blocking=non_blocking), values)

    def last(self, length: int) -> SequenceContext:
        """The last ``length`` positions (the window ``input_ids[:, -length:]`` of a longer history)."""
        values = None if self.values is None else self.values[:, -length:]
        return SequenceContext(self.times[:, -length:], self.query_times[:, -length:], values)

    def check(self, input_ids: torch.Tensor) -> None:
        """ValueError unless every tensor has the ``input_ids`` shape."""
        shape = tuple(input_ids.shape)
        named = {"times": self.times, "query_times": self.query_times, "values": self.values}
        for name, tensor in named.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"SequenceContext.{name} has shape {list(tensor.shape)} but input_ids has "
                                 f"{list(shape)}; build the context from the same padded window")


@dataclass
class SeqBatch:
    """A batch of next-item examples; position ``j`` of ``input_ids`` predicts ``target_ids[:, j]``.

    ``context`` (datasets built ``with_context``): the inputs' timestamps and values, and as query time of
    position ``j`` the timestamp of its target (0 where there is no target).
    """

    input_ids: torch.Tensor  # [B, L] left-padded, 0 = padding
    target_ids: torch.Tensor  # [B, L] next item at each position, 0 = no target
    user_ids: torch.Tensor  # [B]
    context: SequenceContext | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SeqBatch:
        return SeqBatch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.target_ids.to(device, non_blocking=non_blocking),
            self.user_ids.to(device, non_blocking=non_blocking),
            None if self.context is None else self.context.to(device, non_blocking=non_blocking),
        )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class SequenceDataset:
    """Windows of ``max_len + 1`` items from each user's training sequence.

    With ``stride=None`` a user contributes one window, their latest ``max_len + 1`` items (the
    original SASRec recipe). With a stride, earlier windows ending every ``stride`` items are added
    too, so long histories are fully used. ``with_context``: also materialise the ``[E, L + 1]`` windows of
    timestamps (int64) and, when ``seqs`` has them, values (float32), so batches carry a ``SequenceContext``;
    off by default to keep the memory of id-only models.
    """

    def __init__(self, seqs: UserSequences, max_len: int, stride: int | None = None, min_len: int = 2, *,
                 with_context: bool = False) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1 or None, got {stride}")
        self.max_len = max_len
        lengths = seqs.lengths()
        users = np.flatnonzero(lengths >= min_len)
        if stride is None:
            win_users, win_ends = users, seqs.offsets[users + 1]
        else:
            # window ends: the sequence end, then every `stride` items back while >= min_len items remain
            n_win = 1 + (lengths[users] - min_len) // stride
            win_users = np.repeat(users, n_win)
            win_ends = np.repeat(seqs.offsets[users + 1], n_win) - concat_ranges(n_win) * stride
        starts = np.maximum(win_ends - (max_len + 1), seqs.offsets[win_users])
        take = win_ends - starts
        width = max_len + 1
        rows = np.repeat(np.arange(len(win_users)), take)
        cols = width - np.repeat(take, take) + concat_ranges(take)
        src = np.repeat(starts, take) + concat_ranges(take)

        def windowed(column: np.ndarray) -> torch.Tensor:  # [E, L + 1], left-padded with 0
            out = np.zeros((len(win_users), width), dtype=column.dtype)
            out[rows, cols] = column[src]
            return torch.from_numpy(out)

        self.windows = windowed(seqs.items)  # [E, L + 1]
        self.times = windowed(seqs.timestamps) if with_context else None  # [E, L + 1] int64
        self.values = windowed(seqs.values) if with_context and seqs.values is not None else None  # float32
        self.users = torch.from_numpy(win_users.astype(np.int64))

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def batch(self, index: torch.Tensor) -> SeqBatch:
        rows = self.windows.index_select(0, index)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        padded = inputs == 0
        targets = targets.masked_fill(padded, 0)  # a padded position predicts nothing
        context = None
        if self.times is not None:
            times = self.times.index_select(0, index)
            values = None if self.values is None else self.values.index_select(0, index)[:, :-1].contiguous()
            # query time of position j: when its target happened, shifted exactly as the targets are
            query_times = times[:, 1:].masked_fill(padded, 0).contiguous()
            context = SequenceContext(times[:, :-1].contiguous(), query_times, values)
        return SeqBatch(inputs.contiguous(), targets.contiguous(), self.users.index_select(0, index), context)

    def padding_batch(self) -> SeqBatch:
        """One all-padding row (user 0): no targets. A rank whose share of a global batch is empty trains on it,
        so that it runs the same forward as the other ranks (DDP and FSDP need that) and adds nothing. Not a
        batch of 0 rows: transformers' DeepSeek-V3 attention cannot reshape those."""
        zeros = torch.zeros(1, self.max_len, dtype=self.windows.dtype)
        context = None
        if self.times is not None:
            times = torch.zeros(1, self.max_len, dtype=self.times.dtype)
            values = None if self.values is None else torch.zeros(1, self.max_len, dtype=self.values.dtype)
            context = SequenceContext(times, times.clone(), values)
        return SeqBatch(zeros, zeros.clone(), torch.zeros(1, dtype=self.users.dtype), context)


class SequenceLoader:
    """Shuffled, optionally sharded batches over a ``SequenceDataset``, resumable at any batch.

    The order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so a run resumed at
    ``(epoch, batch)`` sees exactly the batches the uninterrupted run would have seen. With
    ``world_size > 1`` rank ``r`` takes every ``world_size``-th example of each global batch, so
    the ranks together consume the same global batches as one process would, whatever the world size:
    shares differ by at most one example, and a rank whose share is empty (a global batch shorter than
    the world, e.g. the last of an epoch) gets ``SequenceDataset.padding_batch``, which has no targets.
    ``TrainStep`` weighs each share by its targets, so the update is that of the whole global batch.
    """

    def __init__(
        self,
        dataset: SequenceDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in 0..{world_size - 1}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.rank, self.world_size = drop_last, rank, world_size

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.dataset))
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.dataset), generator=gen)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[SeqBatch]:
        """Yield this rank's share of global batches ``start_batch..`` of ``epoch``."""
        order = self.order(epoch)
        for b in range(start_batch, len(self)):
            global_index = order[b * self.batch_size : (b + 1) * self.batch_size]
            mine = global_index[self.rank :: self.world_size]
            yield self.dataset.batch(mine) if len(mine) else self.dataset.padding_batch()
