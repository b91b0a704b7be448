"""Two-tower retrieval as a training task: (model, loss, batch) -> (loss, detached stats).

Each row of a ``RetrievalBatch`` is one (user, clicked item) pair. The task encodes the users, the
positives and the sampled negatives in one forward (so a DDP wrapper synchronises gradients) and
scores every user against every positive of the batch and every sampled item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch
from seekrec.models.layers.features import cat_feature_batches
from seekrec.models.losses import RetrievalSoftmaxLoss
from seekrec.models.task import SeededGenerator, StepResult


@dataclass
class RetrievalBatch:
    """B (user, positive item) pairs: ``user`` and ``item`` with B rows each, ``item_ids [B]`` the
    positives' ids ``1..N`` (for log-Q correction and accidental hits)."""

    user: FeatureBatch
    item: FeatureBatch
    item_ids: Tensor

    def __post_init__(self) -> None:
        if not (len(self.user) == len(self.item) == self.item_ids.shape[0]):
            raise ValueError(f"RetrievalBatch rows differ: user {len(self.user)}, item {len(self.item)}, "
                             f"item_ids {self.item_ids.shape[0]}")

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    @property
    def n_targets(self) -> int:
        """One target (the positive) per row; ``TrainStep`` weighs micro-batches by it."""
        return len(self)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> RetrievalBatch:
        return RetrievalBatch(self.user.to(device), self.item.to(device),
                              self.item_ids.to(device, non_blocking=non_blocking))


class RetrievalTask:
    """Computes the retrieval loss of a batch.

    ``catalog``: item features of ids ``0..N`` (row i = item i), where sampled negatives' features
    come from; needed when the loss samples negatives. ``model`` is a ``TwoTower``, possibly DDP-wrapped: its forward
    returns ``(users, items, temperature)``.
    """

    def __init__(
        self, model: nn.Module, loss: RetrievalSoftmaxLoss, *, catalog: FeatureBatch | None = None, seed: int = 0
    ) -> None:
        if loss.sampler is not None and catalog is None:
            raise ValueError("the loss samples negatives: pass catalog=, the item features indexed by item id")
        self.model = model
        self.loss = loss
        self.catalog = catalog
        self.sampling = SeededGenerator(seed)

    def step_loss(self, batch: RetrievalBatch) -> StepResult:
        """Stats: ``loss``, ``temperature``, ``n_targets`` (rows) and ``n_negatives`` (sampled, S)."""
        device = batch.item_ids.device
        negatives = self.loss.sample(self.sampling.on(device))  # [S] or None
        items = batch.item
        if negatives is not None and self.catalog is not None:
            items = cat_feature_batches([batch.item, self.catalog.index(negatives.cpu()).to(device)])
        users, item_vectors, temperature = self.model(batch.user, items)  # [B, D], [B + S, D], []
        size = len(batch)
        batch_scores = users @ item_vectors[:size].T / temperature  # [B, B]
        sampled_scores = None if negatives is None else users @ item_vectors[size:].T / temperature  # [B, S]
        loss = self.loss(batch_scores, batch.item_ids, sampled_scores, negatives)
        stats = {
            "loss": loss.detach(),
            "temperature": temperature.detach(),
            "n_targets": torch.tensor(size, device=device),
            "n_negatives": torch.tensor(0 if negatives is None else negatives.numel(), device=device),
        }
        return StepResult(loss, stats)

    def state_dict(self) -> dict[str, Any]:
        """Seed and generator state, so a resumed run draws the same negatives."""
        return self.sampling.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampling.load_state_dict(state)
