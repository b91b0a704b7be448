"""Per-user time-ordered sequences and the evaluation splits built on them.

Leave-one-out by time (the protocol of the published SASRec/HSTU MovieLens results): each user's
last event is the test target, the one before it the validation target, everything earlier is
training. Events with equal timestamps keep the raw file's order (stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seekrec.data.schema import InteractionData


@dataclass(frozen=True)
class UserSequences:
    """Every user's events in time order, stored CSR-style and indexed by user id.

    Row ``u`` is ``items[offsets[u]:offsets[u + 1]]``; row 0 (the padding id) is always empty.
    ``values`` (optional) is each event's value (``events.value``, e.g. a rating), aligned with ``items``.
    """

    offsets: np.ndarray  # [U + 2] int64
    items: np.ndarray  # [E] int64
    timestamps: np.ndarray  # [E] int64
    values: np.ndarray | None = None  # [E] float32

    def __post_init__(self) -> None:
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.items) or len(self.items) != len(self.timestamps):
            raise ValueError("offsets must start at 0 and end at len(items); items and timestamps must align")
        if self.values is not None and len(self.values) != len(self.items):
            raise ValueError(f"values has {len(self.values)} entries but there are {len(self.items)} events")
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must be non-decreasing")

    @classmethod
    def from_interactions(
        cls, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_users: int,
        values: np.ndarray | None = None,
    ) -> UserSequences:
        """Group events by user and order them by time; ties keep input order. ``values [E]`` (optional)
        travel with their events."""
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 1 or users.max() > n_users):
            raise ValueError(f"user ids must lie in 1..{n_users}")
        order = np.lexsort((np.arange(len(users)), timestamps, users))  # stable: user, ts, file order
        counts = np.bincount(users, minlength=n_users + 1)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        ordered_values = None if values is None else np.asarray(values, dtype=np.float32)[order]
        return cls(offsets, np.asarray(items, dtype=np.int64)[order], np.asarray(timestamps, dtype=np.int64)[order],
                   ordered_values)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 2

    @property
    def n_events(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        """``[U + 1]`` number of events per user id (index 0 is padding, always 0)."""
        return np.diff(self.offsets)

    def row(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def user_of_event(self) -> np.ndarray:
        """``[E]`` the user id of every stored event."""
        return np.repeat(np.arange(self.n_users + 1), self.lengths())

    def drop_last(self, n_drop: np.ndarray | int) -> UserSequences:
        """Remove the last ``n_drop[u]`` events of each user (a scalar applies to all users)."""
        lengths = self.lengths()
        n_drop = np.minimum(np.broadcast_to(np.asarray(n_drop, dtype=np.int64), lengths.shape), lengths)
        keep_len = lengths - n_drop
        position = np.arange(self.n_events) - np.repeat(self.offsets[:-1], lengths)
        keep = position < np.repeat(keep_len, lengths)
        offsets = np.concatenate([[0], np.cumsum(keep_len)]).astype(np.int64)
        return self._subset(offsets, keep)

    def before(self, cutoff: int) -> UserSequences:
        """Only the events with ``timestamp < cutoff``."""
        keep = self.timestamps < cutoff
        kept = np.bincount(self.user_of_event()[keep], minlength=self.n_users + 1)
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        return self._subset(offsets, keep)

    def _subset(self, offsets: np.ndarray, keep: np.ndarray) -> UserSequences:
        values = None if self.values is None else self.values[keep]
        return UserSequences(offsets, self.items[keep], self.timestamps[keep], values)

    def padded(self, users: np.ndarray, max_len: int | None = None, *, column: str = "items") -> np.ndarray:
        """``[B, L]`` left-padded ``column`` of ``users``; keeps the last ``max_len`` events if given.

        ``column``: "items" (int64 ids, 0 = padding), "timestamps" (int64, 0 at padding) or "values"
        (float32, 0 at padding; needs ``values``)."""
        source = {"items": self.items, "timestamps": self.timestamps, "values": self.values}
        if column not in source:
            raise ValueError(f"column must be one of {sorted(source)}, got {column!r}")
        array = source[column]
        if array is None:
            raise ValueError("these sequences carry no values; build them with values= (load_split does)")
        lengths = self.lengths()[users]
        width = int(lengths.max(initial=0)) if max_len is None else max_len
        width = max(width, 1)
        take = np.minimum(lengths, width)
        out = np.zeros((len(users), width), dtype=array.dtype)
        rows = np.repeat(np.arange(len(users)), take)
        cols = width - np.repeat(take, take) + concat_ranges(take)
        src = np.repeat(self.offsets[users + 1] - take, take) + concat_ranges(take)
        out[rows, cols] = array[src]
        return out


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate, what the model may see of each, and the held-out target (its item and, for
    models with event-time inputs, its timestamp: when the prediction is requested)."""

    users: np.ndarray  # [M] user ids
    targets: np.ndarray  # [M] item ids
    history: UserSequences  # visible events, used both for scoring and for masking seen items
    target_times: np.ndarray | None = None  # [M] int64 timestamp of each held-out event

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    """A training set plus validation and test evaluation sets."""

    name: str
    train: UserSequences
    valid: EvalSet
    test: EvalSet

    def eval_set(self, which: str) -> EvalSet:
        if which not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {which!r}")
        return self.valid if which == "valid" else self.test

    def fit_data(self, which: str) -> UserSequences:
        """What a model may be fitted on before it is scored on ``which``.

        For ``valid`` that is the training set; for ``test`` it is every event except the test
        targets (training plus validation), as in the published protocol.
        """
        return self.eval_set(which).history


def leave_one_out(seqs: UserSequences) -> Split:
    """Last event -> test, second-to-last -> validation, the rest -> training.

    Users with two events have a test target but no validation target; users with one event only
    contribute to training.
    """
    lengths = seqs.lengths()
    users = np.arange(len(lengths))
    test_users = users[lengths >= 2]
    valid_users = users[lengths >= 3]
    test_history = seqs.drop_last((lengths >= 2).astype(np.int64))
    train = seqs.drop_last((lengths >= 2).astype(np.int64) + (lengths >= 3))
    test_at, valid_at = seqs.offsets[test_users + 1] - 1, seqs.offsets[valid_users + 1] - 2
    test = EvalSet(test_users, seqs.items[test_at], test_history, seqs.timestamps[test_at])
    valid = EvalSet(valid_users, seqs.items[valid_at], train, seqs.timestamps[valid_at])
    return Split("leave_one_out", train, valid, test)


def temporal_split(seqs: UserSequences, valid_quantile: float = 0.8, test_quantile: float = 0.9) -> Split:
    """Global temporal split at two timestamp quantiles ``t1 < t2``.

    Training is every event before ``t1``. A user's validation target is their first event in
    ``[t1, t2)`` (history: events before ``t1``); their test target is the first event at or
    after ``t2`` (history: events before ``t2``). Users need history to be evaluated.
    """
    if not 0 < valid_quantile < test_quantile < 1:
        raise ValueError("need 0 < valid_quantile < test_quantile < 1")
    t1, t2 = (int(q) for q in np.quantile(seqs.timestamps, [valid_quantile, test_quantile], method="lower"))
    train = seqs.before(t1)
    before_t2 = seqs.before(t2)
    valid = _first_after(seqs, train, before_t2.lengths())
    test = _first_after(seqs, before_t2, seqs.lengths())
    return Split("temporal", train, valid, test)


def _first_after(seqs: UserSequences, history: UserSequences, limit: np.ndarray) -> EvalSet:
    """Users whose next event after ``history`` exists within ``limit`` events of their row."""
    hist_len = history.lengths()
    users = np.flatnonzero((hist_len > 0) & (hist_len < limit))
    at = seqs.offsets[users] + hist_len[users]
    return EvalSet(users, seqs.items[at], history, seqs.timestamps[at])


def concat_ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(c)`` for every ``c`` in counts, vectorised."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


SPLITS = ("leave_one_out", "temporal")


def make_split(seqs: UserSequences, kind: str = "leave_one_out") -> Split:
    """Build a split by name: ``leave_one_out`` (default) or ``temporal``."""
    if kind == "leave_one_out":
        return leave_one_out(seqs)
    if kind == "temporal":
        return temporal_split(seqs)
    raise ValueError(f"unknown split {kind!r}; choose one of {', '.join(SPLITS)}")


def load_split(data_dir: str | Path, split: str = "leave_one_out") -> tuple[InteractionData, Split]:
    """Read a prepared dataset directory and split it; the sequences carry the events' values."""
    data = InteractionData.read(data_dir)
    users, items, timestamps = data.interactions()
    seqs = UserSequences.from_interactions(users, items, timestamps, data.n_users, values=data.event_values())
    return data, make_split(seqs, split)
