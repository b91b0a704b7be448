"""Fitting the pipeline's feature models with the shared ``training.Trainer``.

What is pipeline-specific is the data: training examples behind a ``BatchSource`` (materialised
``Examples`` plus, for the ranker, negatives drawn per batch), served as lazily built shuffled
batches. Runs are single-process and start from scratch (no mid-run resume: a feature-model run on
ml-100k takes minutes); the untrained model is validated first (epoch 0), the baseline to beat.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from seekrec.training.config import TrainConfig
from seekrec.training.run_dir import RunDir
from seekrec.training.step import LossTask, StepStats
from seekrec.training.trainer import FitResult, Trainer


class BatchSource(Protocol):
    """``len``: training examples per epoch; ``batch``: the micro-batch of examples ``index [B]``,
    drawing any randomness (negatives) from ``generator``."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Any: ...


class ExampleEpochs:
    """A ``BatchSource`` as epochs of shuffled global batches, each as ``grad_accum`` micro-batches.

    Batches are built lazily (the ranker's negatives would not fit in memory for a whole epoch); the
    order and any negatives depend on ``seed + epoch`` alone.
    """

    def __init__(self, source: BatchSource, config: TrainConfig) -> None:
        if config.batch_size % config.grad_accum:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum "
                             f"{config.grad_accum}")
        if len(source) == 0:
            raise ValueError("no training examples: the training split is empty")
        self.source, self.seed, self.batch_size = source, config.seed, config.batch_size
        self.micro = config.batch_size // config.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.source) / self.batch_size)

    def epoch(self, epoch: int, start: int) -> Iterator[list[Any]]:
        return itertools.islice(self._batches(epoch), start, None)  # skipped batches still draw their negatives

    def _batches(self, epoch: int) -> Iterator[list[Any]]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.source), generator=generator)
        for lo in range(0, len(order), self.batch_size):
            index = order[lo:lo + self.batch_size]
            yield [self.source.batch(index[i:i + self.micro], generator) for i in range(0, len(index), self.micro)]

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        return {"examples_per_s": stats.sequences * world_size / stats.seconds}


def fit_feature_model(model: torch.nn.Module, task: LossTask, source: BatchSource,
                      validate: Callable[[], dict[str, float]], config: TrainConfig, run_dir: str | Path, *,
                      manifest: dict[str, Any] | None = None) -> FitResult:
    """Train ``model`` through ``task`` on ``source``, selected on ``validate()`` (higher is better).

    ``run_dir`` receives ``metrics.jsonl`` and ``best/`` (weights + ``meta.json`` with ``manifest``:
    config, spec version). After the fit the model holds the best weights, in eval mode.
    """
    for flag in ("compile", "activation_checkpointing"):
        if getattr(config, flag):
            raise ValueError(f"train.{flag} is for the sequence models; set it to false for the feature models")
    # one process: the task built on the bare model is the trainer's task
    trainer = Trainer(model, lambda _: task, ExampleEpochs(source, config), validate, config,
                      run_dir=RunDir(Path(run_dir)), manifest=manifest, resume=False, validate_untrained=True)
    return trainer.fit()
