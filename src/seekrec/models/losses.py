"""Next-item losses over hidden states at positions that have a target.

Every loss is called as ``loss(model, hidden [M, D], targets [M], generator)`` and scores through
``model.similarity`` and ``model.encode_items`` so it works unchanged for dot and cosine models.

* ``bce`` (SASRec): binary cross-entropy, one sampled negative per position.
* ``sampled_softmax``: softmax over the positive and S negatives shared by the batch, with log-Q
  correction (Yi et al. 2019; TF ``sampled_softmax_loss``: ``log Q`` is subtracted from every logit,
  positive included) and accidental hits (a negative equal to the positive) masked out.
* ``full_softmax``: cross-entropy over all N items (padding column excluded).

The two-tower retrieval loss (``RetrievalSoftmaxLoss``, at the end) scores user and item vectors
already produced by the towers: a softmax over in-batch and sampled items with log-Q correction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.models.base import SequenceRecommender
from seekrec.models.negatives import SAMPLER_KINDS, NegativeSampler

LOSS_NAMES = ("bce", "sampled_softmax", "full_softmax")


@dataclass
class LossConfig:
    """Loss choice. ``n_negatives`` (S) is for ``sampled_softmax``; ``bce`` draws one per position.
    ``sampler`` applies to both sampled losses; "popularity" needs item counts at build time."""

    name: str = "full_softmax"
    n_negatives: int = 128
    sampler: str = "uniform"
    logq_correction: bool = True
    remove_accidental_hits: bool = True

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ValueError(f"LossConfig.name must be one of {LOSS_NAMES}, got {self.name!r}")
        if self.n_negatives < 1:
            raise ValueError(f"LossConfig.n_negatives must be >= 1, got {self.n_negatives}")
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"LossConfig.sampler must be one of {SAMPLER_KINDS}, got {self.sampler!r}")


class NextItemLoss(Protocol):
    """What the task calls; ``generator`` drives negative sampling (unused by ``full_softmax``)."""

    def __call__(
        self, model: SequenceRecommender, hidden: Tensor, targets: Tensor, generator: torch.Generator | None
    ) -> Tensor: ...


def sampled_softmax_logits(
    pos_logits: Tensor,
    neg_logits: Tensor,
    targets: Tensor,
    negatives: Tensor,
    *,
    log_q_pos: Tensor | None = None,
    log_q_neg: Tensor | None = None,
    remove_accidental_hits: bool = True,
) -> Tensor:
    """``[M, 1 + S]`` logits with the positive in column 0.

    ``pos_logits [M]``, ``neg_logits [M, S]``, ``targets [M]``, ``negatives [S]``; ``log_q_*`` are
    the log sampling probabilities of the positives ``[M]`` and negatives ``[S]`` (None = no
    correction). Accidental hits are pushed to the dtype's minimum so they get zero probability.
    """
    if log_q_pos is not None:
        pos_logits = pos_logits - log_q_pos
    if log_q_neg is not None:
        neg_logits = neg_logits - log_q_neg[None, :]
    if remove_accidental_hits:
        hits = negatives[None, :] == targets[:, None]  # [M, S]
        neg_logits = neg_logits.masked_fill(hits, torch.finfo(neg_logits.dtype).min)
    return torch.cat([pos_logits[:, None], neg_logits], dim=1)


class BCELoss(nn.Module):
    """SASRec's loss: ``-log sigmoid(s_pos) - log(1 - sigmoid(s_neg))``, averaged over positions.

    A negative that equals the positive is dropped from the negative term when
    ``remove_accidental_hits``.
    """

    def __init__(self, sampler: NegativeSampler, *, remove_accidental_hits: bool = True) -> None:
        super().__init__()
        self.sampler = sampler
        self.remove_accidental_hits = remove_accidental_hits

    def forward(
        self, model: SequenceRecommender, hidden: Tensor, targets: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        negatives = self.sampler.sample(tuple(targets.shape), generator)  # [M]
        pos = model.similarity.pairwise(hidden, model.encode_items(targets)).float()  # [M]
        neg = model.similarity.pairwise(hidden, model.encode_items(negatives)).float()  # [M]
        keep = torch.ones_like(neg)
        if self.remove_accidental_hits:
            keep = (negatives != targets).to(neg.dtype)
        neg_term = (F.softplus(neg) * keep).sum() / keep.sum().clamp(min=1.0)
        return F.softplus(-pos).mean() + neg_term


class SampledSoftmaxLoss(nn.Module):
    """Softmax over the positive and ``n_negatives`` negatives shared by every position of the batch."""

    def __init__(
        self,
        sampler: NegativeSampler,
        n_negatives: int,
        *,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.n_negatives = n_negatives
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits

    def forward(
        self, model: SequenceRecommender, hidden: Tensor, targets: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        negatives = self.sampler.sample((self.n_negatives,), generator)  # [S]
        pos = model.similarity.pairwise(hidden, model.encode_items(targets))  # [M]
        neg = model.similarity.matrix(hidden, model.encode_items(negatives))  # [M, S]
        logits = sampled_softmax_logits(
            pos,
            neg,
            targets,
            negatives,
            log_q_pos=self.sampler.log_q(targets) if self.logq_correction else None,
            log_q_neg=self.sampler.log_q(negatives) if self.logq_correction else None,
            remove_accidental_hits=self.remove_accidental_hits,
        )
        return F.cross_entropy(logits.float(), torch.zeros_like(targets))


class FullSoftmaxLoss(nn.Module):
    """Cross-entropy over items 1..N; the padding item is not a class."""

    def forward(
        self, model: SequenceRecommender, hidden: Tensor, targets: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        items = model.encode_items(torch.arange(1, model.n_items + 1, device=hidden.device))  # [N, D]
        logits = model.similarity.matrix(hidden, items)  # [M, N]
        return F.cross_entropy(logits.float(), targets - 1)


# --- Two-tower retrieval: softmax over in-batch and sampled items ------------------------------------------


@dataclass
class RetrievalLossConfig:
    """Two-tower loss: a softmax for each user over its positive and the negatives below.

    ``in_batch``: the other rows' positive items are negatives (Yi et al. 2019). ``n_negatives`` (S):
    extra items drawn by ``sampler`` and shared by the batch (0 = in-batch only); mixing both covers
    the long tail that in-batch negatives, drawn by popularity, rarely show. ``logq_correction``: every
    logit minus the log of its item's expected count among the candidates (see
    ``RetrievalSoftmaxLoss``), so popular items are not over-penalised as negatives.
    """

    in_batch: bool = True
    n_negatives: int = 0
    sampler: str = "popularity"
    logq_correction: bool = True
    remove_accidental_hits: bool = True

    def __post_init__(self) -> None:
        if self.n_negatives < 0:
            raise ValueError(f"RetrievalLossConfig.n_negatives must be >= 0, got {self.n_negatives}")
        if not self.in_batch and self.n_negatives == 0:
            raise ValueError("RetrievalLossConfig has no negatives: set in_batch=True or n_negatives >= 1")
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"RetrievalLossConfig.sampler must be one of {SAMPLER_KINDS}, got {self.sampler!r}")


def retrieval_softmax_logits(
    batch_scores: Tensor,
    item_ids: Tensor,
    sampled_scores: Tensor | None = None,
    sampled_ids: Tensor | None = None,
    *,
    in_batch: bool = True,
    log_count_batch: Tensor | None = None,
    log_count_sampled: Tensor | None = None,
    remove_accidental_hits: bool = True,
) -> Tensor:
    """``[B, B + S]`` logits; row i's positive is column i (cross-entropy target ``arange(B)``).

    ``batch_scores [B, B]``: user i against the positive item of row j. ``item_ids [B]``: those
    positives' ids. ``sampled_scores [B, S]`` / ``sampled_ids [S]``: the shared sampled items (None =
    none). ``log_count_*``: per column, subtracted from the logits (None = no correction). Masked
    columns (in-batch negatives when ``in_batch`` is False; accidental hits, i.e. a negative that is
    row i's own item) get the dtype's minimum, so they carry zero probability.
    """
    if log_count_batch is not None:
        batch_scores = batch_scores - log_count_batch[None, :]
    size = batch_scores.shape[0]
    off_diagonal = ~torch.eye(size, dtype=torch.bool, device=batch_scores.device)  # [B, B]
    masked = off_diagonal if not in_batch else torch.zeros_like(off_diagonal)
    if remove_accidental_hits:
        masked = masked | (off_diagonal & (item_ids[None, :] == item_ids[:, None]))
    parts = [batch_scores.masked_fill(masked, torch.finfo(batch_scores.dtype).min)]
    if sampled_scores is not None:
        if sampled_ids is None:
            raise ValueError("sampled_scores given without sampled_ids")
        if log_count_sampled is not None:
            sampled_scores = sampled_scores - log_count_sampled[None, :]
        if remove_accidental_hits:
            hits = sampled_ids[None, :] == item_ids[:, None]  # [B, S]
            sampled_scores = sampled_scores.masked_fill(hits, torch.finfo(sampled_scores.dtype).min)
        parts.append(sampled_scores)
    return torch.cat(parts, dim=1)


class RetrievalSoftmaxLoss(nn.Module):
    """Sampled softmax over in-batch and sampled negatives with log-Q correction.

    Sampled-softmax theory subtracts ``log`` of each candidate's expected count in the candidate set.
    In-batch items are draws from the training distribution ``q`` (item frequency, add-one smoothed),
    sampled ones from the sampler's ``Q``; an item's expected count is ``B q_j + S Q_j``. Alone, the
    in-batch term is Yi et al.'s ``s - log q_j`` and the sampled term TF's ``sampled_softmax_loss``
    (constant shifts cancel in the softmax); mixed, the counts weigh the two sources correctly.
    """

    def __init__(self, config: RetrievalLossConfig, n_items: int, *, item_counts: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        if item_counts is None and config.in_batch and config.logq_correction:
            raise ValueError("in-batch log-Q correction needs item_counts [n_items + 1] (training frequency of "
                             "each item); pass them or set logq_correction=False")
        self.frequency = None
        if item_counts is not None:
            self.frequency = NegativeSampler("popularity", n_items, item_counts=item_counts)
        self.sampler = None
        if config.n_negatives:
            counts = item_counts if config.sampler == "popularity" else None
            self.sampler = NegativeSampler(config.sampler, n_items, item_counts=counts)

    def sample(self, generator: torch.Generator | None) -> Tensor | None:
        """``[S]`` negative ids shared by the batch, or None without sampled negatives."""
        return None if self.sampler is None else self.sampler.sample((self.config.n_negatives,), generator)

    def log_counts(self, ids: Tensor, batch_size: int) -> Tensor:
        """``ids [...] -> [...]``: log expected count of each id among B in-batch and S sampled candidates."""
        terms = []
        if self.config.in_batch and self.frequency is not None:
            terms.append(self.frequency.log_q(ids) + math.log(batch_size))
        if self.sampler is not None:
            terms.append(self.sampler.log_q(ids) + math.log(self.config.n_negatives))
        return torch.stack(terms).logsumexp(dim=0)

    def forward(
        self, batch_scores: Tensor, item_ids: Tensor, sampled_scores: Tensor | None = None,
        sampled_ids: Tensor | None = None,
    ) -> Tensor:
        """Mean cross-entropy over the B rows; arguments as in ``retrieval_softmax_logits``."""
        correct = self.config.logq_correction
        size = batch_scores.shape[0]
        logits = retrieval_softmax_logits(
            batch_scores.float(),
            item_ids,
            None if sampled_scores is None else sampled_scores.float(),
            sampled_ids,
            in_batch=self.config.in_batch,
            log_count_batch=self.log_counts(item_ids, size) if correct else None,
            log_count_sampled=self.log_counts(sampled_ids, size) if correct and sampled_ids is not None else None,
            remove_accidental_hits=self.config.remove_accidental_hits,
        )
        return F.cross_entropy(logits, torch.arange(size, device=logits.device))
