"""An exponential moving average of a model's weights, for validation, the best checkpoint and test.

Averaging the weights over the last ~1 / (1 - decay) optimiser steps smooths the noise of the final
steps (Polyak averaging; the EMA of the generative-recommender and LLM training recipes). Only the
parameters are averaged: buffers (running statistics, DeepSeek's routing bias) stay the live model's,
the state they were computed for. The update is torch's own (``get_ema_multi_avg_fn``); the shadow
copy is a flat list of tensors, so models that cannot be deep-copied (a peft model holding a tokenizer)
work too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn

PREFIX = "ema."


class WeightEMA:
    """``decay``-weighted moving average of ``model``'s trainable parameters, started at their values now."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must lie in (0, 1) (e.g. 0.999), or 0 for no averaging; got {decay}")
        self.model, self.decay = model, decay
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for name, p in model.named_parameters() if p.requires_grad]
        self._update = get_ema_multi_avg_fn(decay)

    def _live(self) -> list[Tensor]:
        params = dict(self.model.named_parameters())
        return [params[name].detach() for name in self.names]

    def update(self) -> None:
        """Fold the model's current weights in (after each optimiser step)."""
        self._update(self.shadow, self._live(), None)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the ``with`` block; the training weights restored after."""
        live = self._live()
        saved = [p.clone() for p in live]
        _copy_all(live, self.shadow)
        try:
            yield
        finally:
            _copy_all(live, saved)

    def state_tensors(self) -> dict[str, Tensor]:
        """The shadow weights by parameter name (``ema.<name>``), for a resumable checkpoint."""
        return {PREFIX + name: value for name, value in zip(self.names, self.shadow, strict=True)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore ``state_tensors``; a checkpoint written without averaging is refused by name."""
        missing = [name for name in self.names if PREFIX + name not in tensors]
        if missing:
            raise ValueError(f"the checkpoint has no averaged weights (e.g. {missing[0]!r}): it was written with "
                             "train.ema_decay = 0; resume with that setting or start a new run directory")
        with torch.no_grad():
            for name, value in zip(self.names, self.shadow, strict=True):
                value.copy_(tensors[PREFIX + name])


@torch.no_grad()
def _copy_all(targets: list[Tensor], sources: list[Tensor]) -> None:
    """``targets[i] <- sources[i]``, one copy at a time: FSDP's DTensor shards have no foreach copy (and this runs
    once per validation, so fusing buys nothing)."""
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
