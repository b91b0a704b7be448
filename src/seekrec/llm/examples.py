"""What an LLM ranker is trained and evaluated on: requests with a trained retriever's candidates.

A request is a user's visible history (the first ``length`` events of their time-ordered row, with
ratings and timestamps from the events table) plus the retriever's top ``R`` unseen items for it.

* Training requests come from the leave-one-out split's training part only: for the last
  ``positions_per_user`` positions ``t`` of each user's training row, the history is the row before
  ``t``, the positive the item at ``t``, and the candidate pool the retriever's top ``R`` for that
  prefix with the positive and every item of the user's training row removed (they are the user's
  positives, not negatives). Negatives are drawn from that pool per epoch (``llm.tasks``).
* Validation / test requests: each user's visible history and the retriever's top ``R`` with the
  protocol of ``evaluation.ranking`` (seen items masked, the target kept), with where the target
  stands among them and its full-ranking retriever rank.

Everything here is deterministic: the retriever runs in eval mode and no sampling happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import EvalSet, Split, UserSequences, make_split
from seekrec.evaluation.ranking import EvalBatch, ModelScorer, rank_targets
from seekrec.llm.prompts import History
from seekrec.training.run_dir import RunDir, RunDirError


@dataclass(frozen=True)
class UserEvents:
    """Every user's whole event row in time order (as ``UserSequences`` orders it) with event values.

    The split's training rows and evaluation histories are prefixes of these rows, so a request is
    (user, prefix length) and its ``History`` is read from here.
    """

    seqs: UserSequences
    values: np.ndarray  # [E] float32, aligned with seqs.items

    @classmethod
    def from_data(cls, data: InteractionData) -> UserEvents:
        users, items, timestamps = data.interactions()
        seqs = UserSequences.from_interactions(users, items, timestamps, data.n_users)
        order = np.lexsort((np.arange(len(users)), timestamps, users))  # the order from_interactions uses
        values = data.events.column("value").to_numpy(zero_copy_only=False).astype(np.float32)[order]
        return cls(seqs, values)

    def history(self, user: int, length: int) -> History:
        """The first ``length`` events of ``user``; ``now`` is the time of the next event (the request),
        or of the last one when the row ends there."""
        start, end = int(self.seqs.offsets[user]), int(self.seqs.offsets[user + 1])
        if not 0 <= length <= end - start:
            raise ValueError(f"user {user} has {end - start} events; no prefix of length {length}")
        cut = start + length
        now_index = cut if cut < end else end - 1
        return History(items=self.seqs.items[start:cut], values=self.values[start:cut],
                       timestamps=self.seqs.timestamps[start:cut],
                       now=int(self.seqs.timestamps[now_index]) if end > start else None)

    def value_at(self, user: int, position: int) -> float:
        return float(self.values[self.seqs.offsets[user] + position])


def load_events(data_dir: str | Path) -> tuple[InteractionData, UserEvents, Split]:
    """A prepared dataset, its users' event rows and the leave-one-out split built on them."""
    data = InteractionData.read(data_dir)
    events = UserEvents.from_data(data)
    return data, events, make_split(events.seqs, "leave_one_out")


class Retriever:
    """A trained next-item run (``seekrec train``, e.g. SASRec) used to generate candidates."""

    def __init__(self, model: torch.nn.Module, max_len: int, run: Path, device: torch.device) -> None:
        self.scorer, self.max_len, self.run, self.device = ModelScorer(model, max_len), max_len, run, device
        self.n_items = int(model.n_items)

    @classmethod
    def load(cls, run: str | Path, n_items: int, *, device: str | torch.device = "cpu") -> Retriever:
        """The run's best weights, in eval mode; errors name the run and what to do."""
        run = Path(run)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such retriever run; train one with `seekrec train` (e.g. SASRec) "
                                    "and set retriever_run to its directory")
        try:
            spec = RunDir(run).read_model()
            if spec.use_item_features:
                raise ValueError(f"{run}: a model trained with use_item_features cannot generate candidates here; "
                                 "train one without side features")
            if spec.n_items != n_items:
                raise ValueError(f"{run}: the retriever has {spec.n_items} items but the dataset {n_items}; use a run "
                                 "trained on this dataset")
            model = RunDir(run).load_best(spec.build())
        except RunDirError as exc:
            raise ValueError(f"{run} is not a usable retriever run ({exc}); point retriever_run at a finished "
                             "`seekrec train` run directory") from exc
        device = torch.device(device)
        return cls(model.to(device).eval(), spec.max_len, run, device)

    @torch.inference_mode()
    def scores(self, history: np.ndarray) -> torch.Tensor:
        """``[B, N + 1]`` scores of every item after the left-padded histories ``[B, H]`` (float32)."""
        batch = EvalBatch(torch.zeros(len(history), dtype=torch.long), torch.from_numpy(history),
                          torch.zeros(len(history), dtype=torch.long)).to(self.device)
        return self.scorer.score(batch).float()


@dataclass(frozen=True)
class Requests:
    """``M`` requests with the retriever's top ``R`` candidates, best first.

    ``targets``: the held-out item (training: the positive at position ``lengths``);
    ``target_positions``: its column in ``candidates``, -1 when it is not there (always -1 for training
    requests, whose pool excludes the positive); ``retriever_ranks``: its 0-based full-ranking rank by
    the retriever (seen items masked, ties against the model).
    """

    users: np.ndarray  # [M]
    lengths: np.ndarray  # [M] visible history = the first lengths[m] events of the user's row
    targets: np.ndarray  # [M]
    candidates: np.ndarray  # [M, R] item ids
    logits: np.ndarray  # [M, R] float32 retriever scores
    target_positions: np.ndarray  # [M]
    retriever_ranks: np.ndarray  # [M]

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_candidates(self) -> int:
        return int(self.candidates.shape[1])

    def subset(self, index: np.ndarray) -> Requests:
        return Requests(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def histories(self, events: UserEvents) -> list[History]:
        return [events.history(int(u), int(n)) for u, n in zip(self.users, self.lengths)]


def eval_requests(events: UserEvents, eval_set: EvalSet, retriever: Retriever, n_candidates: int,
                  *, batch_size: int = 256) -> Requests:
    """Each user of ``eval_set`` (valid or test) with the retriever's top ``n_candidates`` under the
    full-ranking protocol: seen items masked, the target kept even when it is a repeat."""
    lengths = eval_set.history.lengths()[eval_set.users]
    return _retrieve(eval_set.users, lengths, eval_set.targets, eval_set.history, eval_set.history, retriever,
                     n_candidates, batch_size, keep_target=True)


def training_requests(events: UserEvents, train: UserSequences, retriever: Retriever, n_candidates: int,
                      positions_per_user: int, *, batch_size: int = 256) -> Requests:
    """The last ``positions_per_user`` positions of every training row (prefixes of at least one event),
    each with the retriever's top ``n_candidates`` after its prefix: the negative pool, from which the
    positive and the whole training row are excluded."""
    if positions_per_user < 1:
        raise ValueError(f"positions_per_user must be >= 1, got {positions_per_user}")
    lengths = train.lengths()
    users, positions = [], []
    for user in np.flatnonzero(lengths >= 2):
        first = max(1, int(lengths[user]) - positions_per_user)
        positions.extend(range(first, int(lengths[user])))
        users.extend([int(user)] * (int(lengths[user]) - first))
    users_arr, positions_arr = np.asarray(users, dtype=np.int64), np.asarray(positions, dtype=np.int64)
    if len(users_arr) == 0:
        raise ValueError("no training requests: no user has two or more training events")
    targets = train.items[train.offsets[users_arr] + positions_arr]
    return _retrieve(users_arr, positions_arr, targets, events.seqs, train, retriever, n_candidates, batch_size,
                     keep_target=False)


@torch.inference_mode()
def _retrieve(users: np.ndarray, lengths: np.ndarray, targets: np.ndarray, rows: UserSequences,
              exclude: UserSequences, retriever: Retriever, n_candidates: int, batch_size: int,
              keep_target: bool) -> Requests:
    """Top ``n_candidates`` after each prefix ``rows.row(user)[:length]``, masking ``exclude.row(user)``;
    the target is kept (evaluation) or masked too (training pools)."""
    n_items = retriever.n_items
    if not 1 <= n_candidates <= n_items:
        raise ValueError(f"n_candidates must lie in 1..{n_items} (the catalog), got {n_candidates}")
    out_items, out_logits, out_pos, out_ranks = [], [], [], []
    for lo in range(0, len(users), batch_size):
        sel = slice(lo, lo + batch_size)
        history = _prefixes(rows, users[sel], lengths[sel], retriever.max_len)  # [B, L]
        seen = torch.from_numpy(exclude.padded(users[sel])).to(retriever.device)  # [B, H]
        batch_targets = torch.from_numpy(targets[sel]).to(retriever.device)
        scores = retriever.scores(history)  # [B, N + 1]
        if keep_target:
            ranks, masked = rank_targets(scores, batch_targets, seen)
        else:
            masked = scores.scatter(1, seen, -torch.inf)
            masked[:, 0] = -torch.inf
            ranks, _ = rank_targets(scores.clone(), batch_targets, seen)  # the positive's own rank, for reports
            masked.scatter_(1, batch_targets[:, None], -torch.inf)
        top = torch.topk(masked, n_candidates, dim=1)  # [B, R], best first
        short = torch.isinf(top.values).any(dim=1)
        if short.any():
            user = int(users[sel][int(short.float().argmax())])
            raise ValueError(f"n_candidates={n_candidates} is more than the {int(torch.isfinite(masked[short][0]).sum())} "
                             f"unseen items user {user} has; lower n_candidates")
        hit = top.indices == batch_targets[:, None]  # [B, R]
        position = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(batch_targets, -1))
        out_items.append(top.indices.cpu().numpy())
        out_logits.append(top.values.cpu().numpy().astype(np.float32))
        out_pos.append(position.cpu().numpy())
        out_ranks.append(ranks.cpu().numpy())
    return Requests(users, lengths, targets, np.concatenate(out_items), np.concatenate(out_logits),
                    np.concatenate(out_pos).astype(np.int64), np.concatenate(out_ranks).astype(np.int64))


def _prefixes(rows: UserSequences, users: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """``[B, L]`` left-padded last ``max_len`` items of each ``rows.row(user)[:length]``."""
    width = max(1, min(max_len, int(lengths.max(initial=1))))
    out = np.zeros((len(users), width), dtype=np.int64)
    for b, (user, length) in enumerate(zip(users, lengths)):
        start = int(rows.offsets[user])
        take = min(int(length), width)
        if take:
            out[b, width - take:] = rows.items[start + int(length) - take:start + int(length)]
    return out


def popularity(train: UserSequences, n_items: int) -> np.ndarray:
    """``[N + 1]`` training counts of every item (index 0 = padding, 0), for popularity-sampled negatives."""
    return np.bincount(train.items, minlength=n_items + 1).astype(np.float64)
