"""CTR ranking as a training task: (model, click groups) -> (weighted binary cross-entropy, detached stats).

A group is one user's click followed by the items it is compared with (sampled negatives, or logged
impressions that were not clicked). The model scores a group in one ``score_candidates`` call, so the
user side (history keys, attention inputs) is computed once per group, not once per pair. A pair with
weight 0 (an accidental hit: a sampled item equal to the click) does not count. Sampled negatives shift
the base rate, so ``sigmoid(logit)`` is not a click probability: calibrate on validation
(``seekrec.models.calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seekrec.features.batch import FeatureBatch
from seekrec.models.task import StepResult


@dataclass
class ClickGroups:
    """B groups of C candidates each: a click and the K = C - 1 items it is compared with.

    ``item``: ``B * C`` full item rows, group b at rows ``b * C ..``. ``label [B, C]``: 1 for a click.
    ``weight [B, C]``: 0 for a pair that must not count (an accidental hit: a draw equal to the click).
    """

    user: FeatureBatch
    item: FeatureBatch
    label: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_targets(self) -> int:
        """Scored pairs (hits excluded); ``TrainStep`` weighs micro-batches by it."""
        return int(self.weight.sum())

    def to(self, device: torch.device | str, non_blocking: bool = True) -> ClickGroups:
        return ClickGroups(self.user.to(device), self.item.to(device), self.label.to(device, non_blocking=non_blocking),
                           self.weight.to(device, non_blocking=non_blocking))


class ClickGroupTask:
    """Weighted binary cross-entropy of ``DIN.score_candidates`` over click groups (mean over scored pairs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def step_loss(self, batch: ClickGroups) -> StepResult:
        """Stats: ``loss``, ``n_targets``, ``mean_probability`` of the scored pairs."""
        logits = self.model.score_candidates(batch.user, batch.item).float()  # [B, C]
        weights = batch.weight.to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, batch.label.to(logits.dtype), reduction="none")
        loss = (losses * weights).sum() / weights.sum()
        with torch.no_grad():
            stats = {"loss": loss.detach(), "n_targets": weights.sum().detach(),
                     "mean_probability": (torch.sigmoid(logits) * weights).sum() / weights.sum()}
        return StepResult(loss, stats)
