"""Next-item prediction as a training task: (model, loss, batch) -> (loss, detached stats).

The trainer calls ``task.step_loss(batch)`` for offline epochs and the online stream alike; the
task owns the seeded generator used for negative sampling so runs are reproducible and resumable
(``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

import torch
from torch import Tensor, nn

from seekrec.models.base import AuxiliaryOutputs, SequenceRecommender
from seekrec.models.layers.context import SequenceContext
from seekrec.models.losses import NextItemLoss


@dataclass
class NextItemBatch:
    """Left-padded training sequences.

    ``input_ids [B, L]``: item ids, 0 = padding. ``target_ids [B, L]``: the item that follows
    ``input_ids[:, t]`` (typically ``input_ids`` shifted left by one plus the next item), 0 where
    there is no target (padding). ``context``: event times / values for models that need them.
    """

    input_ids: Tensor
    target_ids: Tensor
    context: SequenceContext | None = None

    def to(self, device: torch.device | str) -> NextItemBatch:
        context = None if self.context is None else self.context.to(device)
        return NextItemBatch(self.input_ids.to(device), self.target_ids.to(device), context)


class HasNextItemTensors(Protocol):
    """Any batch object with these two ``[B, L]`` tensors works, e.g. one defined by ``data``."""

    input_ids: Tensor
    target_ids: Tensor


class StepResult(NamedTuple):
    """``loss``: scalar to back-propagate. ``stats``: detached scalars for logging."""

    loss: Tensor
    stats: dict[str, Tensor]


class SeededGenerator:
    """A task's sampling ``torch.Generator``: seeded, created on the batch's device at first use, and
    resumable (``state_dict`` / ``load_state_dict``) so a resumed run draws the same samples."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending_state: Tensor | None = None

    def on(self, device: torch.device) -> torch.Generator:
        """The generator on ``device`` (re-created, seeded, when the device changes)."""
        if self._generator is None or self._generator.device != device:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            if self._pending_state is not None:
                generator.set_state(self._pending_state)
                self._pending_state = None
            self._generator = generator
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else self._pending_state
        return {"seed": self.seed, "generator_state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        self._pending_state = state["generator_state"]


def empty_shard_safe(loss_mean: Tensor, n_targets: int) -> Tensor:
    """``loss_mean`` of a batch with ``n_targets`` targets, or 0 when it has none.

    Under torchrun a rank's share of a short batch (the last one of an epoch) can be empty, or hold only
    padding. That rank still runs the same forward and loss calls as the others (FSDP all-gathers a unit's
    weights in each, DDP waits for every parameter's gradient) but the mean over no targets is 0 / 0 = NaN.
    A zero loss instead gives zero gradients to the all-reduce, and ``TrainStep`` weighs every micro-batch
    by its target count anyway. Batches with targets are returned as they are (bitwise unchanged)."""
    return loss_mean if n_targets else torch.nan_to_num(loss_mean, nan=0.0)


class NextItemTask:
    """Computes the next-item loss of a batch.

    ``model`` may be wrapped DDP-style (the wrapper's forward is used so gradients synchronise;
    ``.module`` gives the model for ``encode_items`` / ``similarity``). When the model implements
    ``AuxiliaryOutputs`` (e.g. DeepSeek's balance loss), its auxiliary loss is added and its stats
    are reported.
    """

    def __init__(self, model: nn.Module, loss: NextItemLoss, *, seed: int = 0) -> None:
        self.model = model
        self.core = cast(SequenceRecommender, getattr(model, "module", model))
        self.loss = loss
        self.sampling = SeededGenerator(seed)

    @property
    def seed(self) -> int:
        return self.sampling.seed

    def generator(self, device: torch.device) -> torch.Generator:
        """The task's sampling generator, created seeded on ``device`` at first use."""
        return self.sampling.on(device)

    def step_loss(self, batch: HasNextItemTensors) -> StepResult:
        """Forward the batch and return the scalar loss plus detached stats.

        Stats: ``loss`` (total), ``loss_main``, ``loss_aux`` (0 without auxiliary outputs),
        ``n_targets``, plus the model's own auxiliary stats. A batch's ``context`` (when it has one) goes to
        the model as ``context=``. A batch without targets (a rank's empty share of a short batch) has main
        loss 0 and adds zero gradients (``empty_shard_safe``).
        """
        context = getattr(batch, "context", None)
        # a keyword, so DDP wrappers pass it on; left out when absent so context-free models need not take it
        hidden = self.model(batch.input_ids) if context is None else self.model(batch.input_ids, context=context)
        has_target = batch.target_ids != 0  # [B, L]
        targets = batch.target_ids[has_target]  # [M]
        main = empty_shard_safe(self.loss(self.core, hidden[has_target], targets, self.generator(hidden.device)),
                                targets.numel())
        aux = main.new_zeros(())
        stats: dict[str, Tensor] = {}
        if isinstance(self.core, AuxiliaryOutputs):
            aux = self.core.auxiliary_loss()
            stats.update(self.core.auxiliary_stats())
        total = main + aux
        stats.update(
            loss=total.detach(),
            loss_main=main.detach(),
            loss_aux=aux.detach(),
            n_targets=has_target.sum().detach(),
        )
        return StepResult(total, stats)

    def state_dict(self) -> dict[str, Any]:
        """Seed and generator state, so a resumed run draws the same negatives."""
        return self.sampling.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampling.load_state_dict(state)
