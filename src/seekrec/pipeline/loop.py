"""The epoch loop for the feature models: the shared ``TrainStep`` over shuffled minibatches, validation,
early stopping and the best checkpoint, as the sequence-model ``Trainer`` does.

What differs is the data: batches come from a ``BatchSource`` (materialised ``Examples`` plus, for the
ranker, negatives drawn per batch) and validation is a callable returning higher-is-better metrics.
Runs are single-process and start from scratch (no mid-run resume: a feature-model run on ml-100k
takes minutes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_model, save_model
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from seekrec.io import atomic_path, atomic_write_json
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, resolve_device
from seekrec.training.metrics_log import MetricsLog
from seekrec.training.step import LossTask, TrainStep, build_optimizer, warmup_cosine

log = logging.getLogger(__name__)
BEST_DIR = "best"
MODEL_FILE = "model.safetensors"


class BatchSource(Protocol):
    """``len``: training examples per epoch; ``batch``: the micro-batch of examples ``index [B]``,
    drawing any randomness (negatives) from ``generator``."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Any: ...


@dataclass
class FitResult:
    """Where the best validation score was reached and what the run cost."""

    best_valid: dict[str, float]
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float
    seconds_to_best: float
    examples_per_second: float


class FeatureTrainer:
    """Trains ``model`` through ``task`` on ``source``; keeps the weights of the best ``validate()``.

    ``run_dir`` receives ``metrics.jsonl`` (train and valid records, readable by ``seekrec plot``)
    and ``best/`` (``model.safetensors`` + ``meta.json`` with ``manifest``: config, spec version).
    Validation runs on the untrained model first (epoch 0, the baseline every epoch must beat) and
    then every ``eval_every`` epochs. After ``fit`` the model holds the best weights.
    """

    def __init__(self, model: torch.nn.Module, task: LossTask, source: BatchSource,
                 validate: Callable[[], dict[str, float]], config: TrainConfig, run_dir: str | Path, *,
                 manifest: dict[str, Any] | None = None) -> None:
        for flag in ("compile", "activation_checkpointing"):
            if getattr(config, flag):
                raise ValueError(f"train.{flag} is for the sequence models; set it to false for the feature models")
        if config.checkpoint_every:
            raise ValueError("train.checkpoint_every: feature-model runs keep only the best checkpoint; set it to 0")
        if config.batch_size % config.grad_accum:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum "
                             f"{config.grad_accum}")
        if len(source) == 0:
            raise ValueError("no training examples: the training split is empty")
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.task, self.source, self.validate, self.config = task, source, validate, config
        self.run_dir = Path(run_dir)
        self.manifest = manifest or {}
        self.micro = config.batch_size // config.grad_accum
        self.steps_per_epoch = math.ceil(len(source) / config.batch_size)
        self.optimizer = build_optimizer(model, config)
        total = self.steps_per_epoch * config.max_epochs
        self.scheduler = LambdaLR(self.optimizer, warmup_cosine(total, config.warmup_steps, config.min_lr_ratio))
        self.step_fn = TrainStep(model, task, self.optimizer, self.scheduler, config,
                                 DistContext(0, 1, 0, self.device))

    def _global_batches(self, epoch: int) -> Iterator[list[Any]]:
        """Epoch ``epoch``'s global batches, each as ``grad_accum`` micro-batches, built lazily (the
        ranker's negatives would not fit in memory for a whole epoch); the order and any negatives
        depend on ``seed + epoch`` alone."""
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        order = torch.randperm(len(self.source), generator=generator)
        size = self.config.batch_size
        for lo in range(0, len(order), size):
            index = order[lo:lo + size]
            yield [self.source.batch(index[i:i + self.micro], generator) for i in range(0, len(index), self.micro)]

    def _save_best(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        best = self.run_dir / BEST_DIR
        best.mkdir(parents=True, exist_ok=True)
        with atomic_path(best / MODEL_FILE) as tmp:
            save_model(self.model, str(tmp))
        atomic_write_json(best / "meta.json", {"epoch": epoch, "step": step, "valid": metrics, **self.manifest})

    def _evaluate(self) -> dict[str, float]:
        self.model.eval()
        with torch.inference_mode():
            return self.validate()

    def _validation(self, metrics_log: MetricsLog, epoch: int, step: int, start: float,
                    best: dict[str, Any]) -> dict[str, Any]:
        """Validate, log, and save the weights when they beat ``best``; returns the (new) best."""
        metrics = self._evaluate()
        elapsed = time.perf_counter() - start
        metric = self.config.select_metric
        if metric not in metrics:
            raise ValueError(f"train.select_metric {metric!r} is not a validation metric; "
                             f"choose one of {sorted(metrics)}")
        metrics_log.append({"kind": "valid", "step": step, "epoch": epoch, "elapsed": elapsed, **metrics})
        log.info("epoch %d step %d valid %s=%.4f", epoch, step, metric, metrics[metric])
        if metrics[metric] <= best["metric"]:
            return best
        self._save_best(metrics, epoch, step)
        return {"metric": metrics[metric], "epoch": epoch, "step": step, "valid": metrics, "elapsed": elapsed}

    def fit(self) -> FitResult:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics_log = MetricsLog(self.run_dir / "metrics.jsonl")
        metrics_log.clear()
        best: dict[str, Any] = {"metric": -math.inf, "epoch": -1, "valid": {}, "elapsed": 0.0}
        start = time.perf_counter()
        step = bad = epoch = examples = 0
        train_seconds = 0.0
        best = self._validation(metrics_log, epoch, step, start, best)  # epoch 0: the untrained model
        while epoch < cfg.max_epochs and bad < cfg.patience:
            bar = tqdm(self._global_batches(epoch), desc=f"epoch {epoch}", unit="step", total=self.steps_per_epoch,
                       leave=False)
            for group in bar:
                stats = self.step_fn(group)
                step += 1
                examples, train_seconds = examples + stats.sequences, train_seconds + stats.seconds
                bar.set_postfix(loss=f"{stats.loss:.4f}")
                metrics_log.append({"kind": "train", "step": step, "epoch": epoch, "loss": stats.loss, "lr": stats.lr,
                                    "grad_norm": stats.grad_norm, "examples_per_s": stats.sequences / stats.seconds,
                                    **stats.extra})
            epoch += 1
            if epoch % cfg.eval_every and epoch != cfg.max_epochs:
                continue
            before = best["metric"]
            best = self._validation(metrics_log, epoch, step, start, best)
            bad = 0 if best["metric"] > before else bad + 1
        load_model(self.model, str(self.run_dir / BEST_DIR / MODEL_FILE))
        self.model.eval()
        return FitResult(best["valid"], best["epoch"], epoch, step, time.perf_counter() - start, best["elapsed"],
                         examples / train_seconds if train_seconds else 0.0)
