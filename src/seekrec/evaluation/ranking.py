"""Full-ranking evaluation: rank each user's held-out target against every item in the catalog.

No sampled negatives. Items the user has already interacted with are masked out (the protocol of
the published SASRec/HSTU MovieLens results) except the target itself, so a repeat is still
rankable. Ties count against the model: the rank is the number of other items scoring at least as
high as the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from seekrec.data.splits import EvalSet, UserSequences
from seekrec.evaluation import metrics
from seekrec.models.layers.context import SequenceContext

RANK_KS = (10, 50, 200)
METRIC_KEYS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")
COVERAGE_K = 10


@dataclass
class EvalBatch:
    """What a scorer sees of a batch of evaluation users.

    ``context`` (only for scorers that declare ``needs_context``): the history's timestamps and values
    ``[B, H]``, with query times from ``history_context``.
    """

    users: torch.Tensor  # [B] user ids
    history: torch.Tensor  # [B, H] left-padded visible history, 0 = padding
    targets: torch.Tensor  # [B] held-out item ids (for the evaluator; scorers must not read them)
    context: SequenceContext | None = None

    def to(self, device: torch.device | str) -> EvalBatch:
        context = None if self.context is None else self.context.to(device)
        return EvalBatch(self.users.to(device), self.history.to(device), self.targets.to(device), context)


class Scorer(Protocol):
    """Anything that scores every item for a batch of users: ``[B, N + 1]``, column 0 = padding.

    A scorer with a true ``needs_context`` attribute gets ``EvalBatch.context``."""

    def score(self, batch: EvalBatch) -> torch.Tensor: ...


class ModelScorer:
    """Adapts a next-item model to the evaluator: scores every item from the last ``max_len`` items (and,
    for a model whose config ``needs_context``, their ``SequenceContext``)."""

    def __init__(self, model: torch.nn.Module, max_len: int) -> None:
        self.model, self.max_len = model, max_len
        config = getattr(getattr(model, "module", model), "config", None)
        self.needs_context = bool(getattr(config, "needs_context", False))

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.model.score_all(*self.inputs(batch))  # [B, N + 1]

    def inputs(self, batch: EvalBatch) -> tuple[torch.Tensor] | tuple[torch.Tensor, SequenceContext]:
        """The model's arguments: the last ``max_len`` items ``[B, L]``, and their context if it needs one."""
        history = batch.history[:, -self.max_len :]  # [B, L]
        if not self.needs_context:
            return (history,)
        if batch.context is None:
            raise ValueError("the model needs event times (config.needs_context) but the EvalBatch has no context; "
                             "evaluate() builds it when the scorer sets needs_context")
        return history, batch.context.last(history.shape[1])


def history_context(history: UserSequences, users: np.ndarray, target_times: np.ndarray) -> SequenceContext:
    """The ``SequenceContext`` of ``history.padded(users)`` ``[B, H]``: the events' timestamps and values (when
    the history has them), and as query time of each position the next event's timestamp, ``target_times [B]``
    (the held-out events') at the last position; 0 at padding. Only the last position matters for scoring."""
    times = history.padded(users, column="timestamps")  # [B, H]
    values = history.padded(users, column="values") if history.values is not None else None
    return SequenceContext.of_history(history.padded(users), times, values, np.asarray(target_times, dtype=np.int64))


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ranks: np.ndarray  # [M] 0-based rank of each user's target
    n_users: int
    seconds: float


def rank_targets(
    scores: torch.Tensor, targets: torch.Tensor, history: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of each target and the masked scores.

    ``scores`` ``[B, N + 1]`` (modified in place), ``targets`` ``[B]``, ``history`` ``[B, H]`` or
    ``None`` for no masking. Column 0 (padding) is never a candidate.
    """
    if torch.isnan(scores).any():
        raise ValueError("the model produced NaN scores; check the checkpoint and inputs")
    rows = torch.arange(scores.shape[0], device=scores.device)
    target_scores = scores[rows, targets].clone()
    scores[:, 0] = -torch.inf
    if history is not None:
        scores.scatter_(1, history, -torch.inf)
        scores[rows, targets] = target_scores
    higher_or_tied = (scores >= target_scores[:, None]).sum(dim=1)
    return higher_or_tied - 1, scores  # minus the target itself


def summarize(ranks: np.ndarray, top_items: np.ndarray | None, n_items: int) -> dict[str, float]:
    """The standard metric dictionary from ranks (and top-K lists for coverage)."""
    out: dict[str, float] = {}
    for k in RANK_KS:
        out[f"hr@{k}"] = metrics.hit_rate(ranks, k)
    for k in RANK_KS:
        out[f"ndcg@{k}"] = metrics.ndcg(ranks, k)
    out["mrr"] = metrics.mrr(ranks)
    if top_items is not None:
        out[f"coverage@{COVERAGE_K}"] = metrics.coverage(top_items, n_items)
    return out


@torch.inference_mode()
def evaluate(
    scorer: Scorer,
    eval_set: EvalSet,
    n_items: int,
    *,
    batch_size: int = 256,
    mask_history: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Score every item for each evaluation user in batches and rank their target.

    A scorer whose ``needs_context`` is true also gets the histories' event times and values
    (``history_context``, query time of the last position = ``eval_set.target_times``)."""
    if len(eval_set) == 0:
        raise ValueError("the evaluation set is empty: no user has a held-out event")
    with_context = bool(getattr(scorer, "needs_context", False))
    if with_context and eval_set.target_times is None:
        raise ValueError("the scorer needs event times but the EvalSet has no target_times; build it with "
                         "leave_one_out or temporal_split")
    start = time.perf_counter()
    index = np.arange(len(eval_set))
    ranks, tops = [], []
    batches = range(0, len(index), batch_size)
    for lo in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
        sel = index[lo : lo + batch_size]
        batch_users = eval_set.users[sel]
        batch = EvalBatch(
            torch.from_numpy(batch_users),
            torch.from_numpy(eval_set.history.padded(batch_users)),
            torch.from_numpy(eval_set.targets[sel]),
            history_context(eval_set.history, batch_users, eval_set.target_times[sel])
            if with_context and eval_set.target_times is not None else None,
        ).to(device)
        scores = scorer.score(batch).float()
        if scores.shape != (len(sel), n_items + 1):
            raise ValueError(f"scorer returned shape {tuple(scores.shape)}, expected {(len(sel), n_items + 1)}")
        rank, masked = rank_targets(scores, batch.targets, batch.history if mask_history else None)
        ranks.append(rank.cpu().numpy())
        tops.append(torch.topk(masked, min(COVERAGE_K, n_items), dim=1).indices.cpu().numpy())
    all_ranks = np.concatenate(ranks)
    result = summarize(all_ranks, np.concatenate(tops), n_items)
    return EvalResult(result, all_ranks, len(all_ranks), time.perf_counter() - start)
