"""Fine-tuning tasks for LLM rankers, and the epochs of training requests they consume.

* ``RerankTask`` (LlamaRec-style, listwise): each group is one positive and ``n`` negatives sharing a
  history; the loss is the softmax cross-entropy of the positive over the group's scores.
* ``PointwiseTask`` (TALLRec-style, yes/no): binary cross-entropy of each pair's score against its
  label: ``click`` (the positive 1, retriever negatives 0) or ``like`` (the rated item, 1 when its
  rating reaches a threshold).

Both turn a ``PairBatch`` into ``(mean loss, stats)`` for the shared ``TrainStep``; ``n_targets`` is
the batch's number of groups (all groups are the same size, so weighting groups equally is weighting
pairs equally). ``RequestEpochs`` serves the batches: shuffled by ``seed + epoch`` and with each
batch's negatives drawn from a generator seeded by ``(seed, epoch, batch)``, so any batch can be
rebuilt on its own and a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seekrec.data.splits import UserSequences
from seekrec.llm.examples import Requests, UserEvents
from seekrec.llm.prompts import History
from seekrec.llm.scoring import PairBatch
from seekrec.training.config import TrainConfig
from seekrec.training.step import StepStats

TASKS = ("rerank", "pointwise")
LABELS = ("click", "like")
NEGATIVES = ("retriever", "popularity")
Collate = Callable[..., PairBatch]  # ranker.collate(histories, items, labels, group_size)


@dataclass(frozen=True)
class TaskSettings:
    """What a group holds: ``n_negatives`` negatives (from the retriever's top candidates of the prefix,
    or popularity-sampled from the catalogue) per positive, or for ``pointwise`` + ``like`` the rated
    item alone, labelled ``rating >= like_threshold``."""

    task: str = "rerank"
    label: str = "click"
    n_negatives: int = 7
    negatives: str = "retriever"
    like_threshold: float = 4.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
        if self.task == "rerank" and self.label != "click":
            raise ValueError("label = 'like' is a pointwise task: set task = 'pointwise'")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.n_negatives < 1 and not self.likes:
            raise ValueError(f"n_negatives must be >= 1 for task {self.task!r}, got {self.n_negatives}")

    @property
    def likes(self) -> bool:
        return self.task == "pointwise" and self.label == "like"

    @property
    def group_size(self) -> int:
        return 1 if self.likes else 1 + self.n_negatives


class RerankTask:
    """Softmax cross-entropy of each group's positive over the group's ``S`` scores."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def step_loss(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.labels is None or batch.group_size < 2:
            raise ValueError("the rerank task needs labelled groups of at least two pairs")
        scores = self.model(batch).view(-1, batch.group_size)  # [G, S]
        target = batch.labels.view(-1, batch.group_size).argmax(dim=1)  # [G] the positive's column
        loss = F.cross_entropy(scores, target)
        top1 = (scores.detach().argmax(dim=1) == target).float().mean()
        return loss, {"n_targets": torch.tensor(batch.n_targets), "top1": top1}


class PointwiseTask:
    """Binary cross-entropy of each pair's score (a logit) against its 0/1 label."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def step_loss(self, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.labels is None:
            raise ValueError("the pointwise task needs labelled pairs")
        scores = self.model(batch)  # [B]
        loss = F.binary_cross_entropy_with_logits(scores, batch.labels.to(scores.dtype))
        accuracy = ((scores.detach() > 0).float() == batch.labels).float().mean()
        return loss, {"n_targets": torch.tensor(batch.n_targets), "accuracy": accuracy}


def build_task(settings: TaskSettings) -> Callable[[torch.nn.Module], RerankTask | PointwiseTask]:
    """The trainer's task factory for ``settings.task``."""
    return RerankTask if settings.task == "rerank" else PointwiseTask


class RequestEpochs:
    """Training requests as epochs of global batches (``train.batch_size`` groups), each split into
    ``train.grad_accum`` micro-batches of tokenised pairs.

    Under torchrun (``rank`` of ``world_size``) a rank takes every ``world_size``-th group of each micro-batch,
    so the ranks together train on the same global batches, with the same negatives, as one process: each
    global batch's negatives are drawn for all of its groups before the groups are shared out. A rank whose
    share of a micro-batch is empty (a micro-batch with fewer groups than ranks) trains on a copy of the
    micro-batch's first group marked ``padding``: the same forward as the other ranks (DDP and FSDP need one),
    no loss term.

    ``exclude`` (the training rows) and ``popularity`` are needed for popularity-sampled negatives only.
    """

    def __init__(self, requests: Requests, events: UserEvents, collate: Collate, settings: TaskSettings,
                 config: TrainConfig, *, exclude: UserSequences | None = None,
                 popularity: np.ndarray | None = None, rank: int = 0, world_size: int = 1) -> None:
        if config.batch_size % config.grad_accum:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum "
                             f"{config.grad_accum}")
        if len(requests) == 0:
            raise ValueError("no training requests: the training split is empty")
        if settings.negatives == "retriever" and not settings.likes and settings.n_negatives > requests.n_candidates:
            raise ValueError(f"n_negatives={settings.n_negatives} is more than the n_candidates="
                             f"{requests.n_candidates} they are drawn from; lower it or raise n_candidates")
        if settings.negatives == "popularity" and (exclude is None or popularity is None):
            raise ValueError("popularity-sampled negatives need the training rows and item popularity")
        self.requests, self.events, self.collate, self.settings = requests, events, collate, settings
        self.exclude, self.popularity = exclude, popularity
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in 0..{world_size - 1}")
        self.seed, self.batch_size, self.micro = config.seed, config.batch_size, config.batch_size // config.grad_accum
        self.rank, self.world_size = rank, world_size

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.requests) / self.batch_size)

    def epoch(self, epoch: int, start: int) -> Iterator[list[PairBatch]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.requests))
        for b in range(start, self.steps_per_epoch):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            rng = np.random.default_rng([self.seed, epoch, b])
            negatives = None if self.settings.likes else self.negatives(index, rng)  # [G, n], drawn on every rank
            micro = []
            for i in range(0, len(index), self.micro):
                rows = np.arange(i, min(i + self.micro, len(index)))
                mine = rows[self.rank::self.world_size]
                padding = len(mine) == 0
                mine = rows[:1] if padding else mine
                micro.append(self.batch(index[mine], None if negatives is None else negatives[mine], padding=padding))
            yield micro

    def batch(self, index: np.ndarray, negatives: np.ndarray | None = None, *, padding: bool = False) -> PairBatch:
        """The pairs of requests ``index [G]``: each group's positive first, then its ``negatives [G, n]``
        (``None`` for the like label). ``padding``: a batch that only keeps a rank in step (no loss term)."""
        req = self.requests
        histories: Sequence[History] = [self.events.history(int(req.users[i]), int(req.lengths[i])) for i in index]
        if self.settings.likes:
            labels = np.array([self.events.value_at(int(req.users[i]), int(req.lengths[i]))
                               >= self.settings.like_threshold for i in index], dtype=np.float32)
            return replace(self.collate(histories, req.targets[index].tolist(), labels, 1), padding=padding)
        if negatives is None:
            raise ValueError("a click group needs its negatives: draw them with RequestEpochs.negatives")
        items = np.concatenate([req.targets[index, None], negatives], axis=1)  # [G, S]
        labels = np.zeros(items.shape, dtype=np.float32)
        labels[:, 0] = 1.0
        batch = self.collate(histories, items.ravel().tolist(), labels.ravel(), self.settings.group_size)
        return replace(batch, padding=padding)

    def negatives(self, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``[G, n_negatives]`` distinct negatives per request (never the positive or a training item)."""
        n = self.settings.n_negatives
        if self.settings.negatives == "retriever":
            pool = self.requests.candidates[index]  # [G, R], the positive and seen items already removed
            pick = np.argsort(rng.random(pool.shape), axis=1)[:, :n]  # n uniform draws without replacement
            return np.take_along_axis(pool, pick, axis=1)
        assert self.exclude is not None and self.popularity is not None
        out = np.empty((len(index), n), dtype=np.int64)
        for g, i in enumerate(index):
            weights = self.popularity.copy()
            weights[self.exclude.row(int(self.requests.users[i]))] = 0.0
            weights[int(self.requests.targets[i])] = 0.0
            weights[0] = 0.0
            if np.count_nonzero(weights) < n:
                raise ValueError(f"user {int(self.requests.users[i])} has fewer than n_negatives={n} unseen "
                                 "items with training interactions; lower n_negatives")
            out[g] = rng.choice(len(weights), size=n, replace=False, p=weights / weights.sum())
        return out

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, Any]:
        return {"pairs_per_s": stats.sequences * world_size / stats.seconds,
                "groups_per_s": stats.tokens * world_size / stats.seconds, "step_seconds": stats.seconds}
