"""CTR ranking as a training task: (model, batch) -> (binary cross-entropy, detached stats).

Two sources of negatives. Logged: the batch carries a 0/1 ``label`` per (user, item) pair (shown and
not clicked), and every pair is scored as is. Sampled: the batch holds clicks only (``label=None``);
the task draws ``n_negatives`` items per click from the catalogue (uniformly or by popularity) and
drops a draw equal to the click (an accidental hit). Sampled negatives shift the base rate, so
``sigmoid(logit)`` is not a click probability: calibrate on logged validation data
(``seekrec.models.calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch
from seekrec.models.layers.features import cat_feature_batches
from seekrec.models.negatives import NegativeSampler
from seekrec.models.task import SeededGenerator, StepResult


@dataclass
class CTRBatch:
    """B (user, item) pairs; ``label [B]`` float 0/1, or None when every pair is a click."""

    user: FeatureBatch
    item: FeatureBatch
    label: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.user) != len(self.item):
            raise ValueError(f"CTRBatch rows differ: user {len(self.user)}, item {len(self.item)}")
        if self.label is not None and tuple(self.label.shape) != (len(self.user),):
            raise ValueError(f"CTRBatch.label must be [B] = [{len(self.user)}], got {list(self.label.shape)}")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_targets(self) -> int:
        """One target per row (the logged pair, or the click and its sampled negatives)."""
        return len(self)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> CTRBatch:
        label = None if self.label is None else self.label.to(device, non_blocking=non_blocking)
        return CTRBatch(self.user.to(device), self.item.to(device), label)


class CTRTask:
    """Binary cross-entropy of a CTR model's ``forward(user, item) -> logits [B]``.

    For click-only batches give ``sampler`` (ids 1..N), ``catalogue`` (item features, row i = item i)
    and ``n_negatives`` (K per click); ``item_id_column`` names the item id in item batches. The loss
    is the mean over scored pairs; ``model`` may be DDP-wrapped.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sampler: NegativeSampler | None = None,
        catalogue: FeatureBatch | None = None,
        n_negatives: int = 1,
        item_id_column: str = "item_id",
        seed: int = 0,
    ) -> None:
        if n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")
        if (sampler is None) != (catalogue is None):
            raise ValueError("sampled negatives need both sampler= and catalogue= (or neither, for logged labels)")
        self.model = model
        self.sampler = sampler
        self.catalogue = catalogue
        self.n_negatives = n_negatives
        self.item_id_column = item_id_column
        self.sampling = SeededGenerator(seed)

    def step_loss(self, batch: CTRBatch) -> StepResult:
        """Stats: ``loss``, ``n_targets`` (rows), ``positive_rate`` and ``mean_probability`` of scored pairs."""
        if batch.label is not None:
            logits = self.model(batch.user, batch.item)  # [B]
            labels, weights = batch.label.to(logits.dtype), torch.ones_like(logits)
        else:
            logits, labels, weights = self._sampled_pairs(batch)
        logits = logits.float()
        loss = (F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none") * weights).sum()
        loss = loss / weights.sum()
        with torch.no_grad():
            stats = {
                "loss": loss.detach(),
                "n_targets": torch.tensor(len(batch), device=logits.device),
                "positive_rate": (labels * weights).sum() / weights.sum(),
                "mean_probability": (torch.sigmoid(logits) * weights).sum() / weights.sum(),
            }
        return StepResult(loss, stats)

    def _sampled_pairs(self, batch: CTRBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Each click followed by K sampled items: ``logits, labels, weights`` of ``B * (1 + K)`` pairs;
        weight 0 for an accidental hit."""
        if self.sampler is None or self.catalogue is None:
            raise ValueError("the batch has no labels (clicks only): build the task with sampler= and catalogue=")
        size, k = len(batch), self.n_negatives
        device = batch.item.categorical[self.item_id_column].device
        negatives = self.sampler.sample((size, k), self.sampling.on(device))  # [B, K]
        clicked = batch.item.categorical[self.item_id_column][:, 0]  # [B]
        items = cat_feature_batches([batch.item, self.catalogue.index(negatives.flatten().cpu()).to(device)])
        # rows of `items`: B clicks, then B * K negatives; reorder to user-major [click, negatives] groups
        order = torch.cat([torch.arange(size, device=device)[:, None],
                           size + torch.arange(size * k, device=device).view(size, k)], dim=1).flatten()
        users = batch.user.index(torch.arange(size, device=device).repeat_interleave(1 + k))
        logits = self.model(users, items.index(order))  # [B * (1 + K)]
        labels = torch.zeros(size, 1 + k, device=device)
        labels[:, 0] = 1.0
        weights = torch.cat([torch.ones(size, 1, device=device), (negatives != clicked[:, None]).float()], dim=1)
        return logits, labels.flatten(), weights.flatten()

    def state_dict(self) -> dict[str, Any]:
        """Seed and generator state, so a resumed run draws the same negatives."""
        return self.sampling.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampling.load_state_dict(state)
