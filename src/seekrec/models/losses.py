"""Next-item losses over hidden states at positions that have a target.

Every loss is called as ``loss(model, hidden [M, D], targets [M], generator)`` and scores through
``model.similarity`` and ``model.encode_items`` so it works unchanged for dot and cosine models.

* ``bce`` (SASRec): binary cross-entropy, one sampled negative per position.
* ``sampled_softmax``: softmax over the positive and S negatives shared by the batch, with log-Q
  correction (Yi et al. 2019; TF ``sampled_softmax_loss``: ``log Q`` is subtracted from every logit,
  positive included) and accidental hits (a negative equal to the positive) masked out.
* ``full_softmax``: cross-entropy over all N items (padding column excluded).
"""

from __future__ import annotations

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
