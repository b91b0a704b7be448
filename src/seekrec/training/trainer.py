"""The epoch trainer of every offline model: the shared step over an epoch's batches, validation,
early stopping, the best checkpoint and (for runs that ask for it) exact resume.

What differs between the sequence models and the pipeline's feature models is only the data
(``EpochBatches``) and how a model is validated (a callable returning higher-is-better metrics).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from seekrec.data.sequences import SequenceDataset, SequenceLoader
from seekrec.training.checkpoint import latest_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import (
    DistContext,
    barrier,
    broadcast_flag,
    resolve_device,
)
from seekrec.training.ema import WeightEMA
from seekrec.training.parallel import build_parallel
from seekrec.training.progress import progress_log
from seekrec.training.run_dir import RunDir
from seekrec.training.step import (
    LossTask,
    StepStats,
    build_optimizer,
    warmup_cosine,
)

log = logging.getLogger(__name__)
Validate = Callable[[], dict[str, float]]


class EpochBatches(Protocol):
    """A trainer's data: ``steps_per_epoch`` global batches per epoch, each as ``grad_accum`` micro-batches."""

    @property
    def steps_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start: int) -> Iterator[list[Any]]:
        """Global batches ``start..`` of ``epoch``; the same batches whatever ``start`` (resume)."""
        ...

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        """The per-second rates logged with each step (named after what a batch holds)."""
        ...


class SequenceEpochs:
    """Sequence windows sharded across ranks (``SequenceLoader``), resumable at any global batch."""

    def __init__(self, dataset: SequenceDataset, config: TrainConfig, ctx: DistContext) -> None:
        if config.batch_size % config.grad_accum:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum")
        self.grad_accum = config.grad_accum
        self.loader = SequenceLoader(dataset, config.batch_size // config.grad_accum, seed=config.seed,
                                     rank=ctx.rank, world_size=ctx.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.loader) / self.grad_accum)

    def epoch(self, epoch: int, start: int) -> Iterator[list[Any]]:
        micro = list(self.loader.iter_epoch(epoch, start * self.grad_accum))
        for i in range(0, len(micro), self.grad_accum):
            yield micro[i : i + self.grad_accum]

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        return {"seq_per_s": stats.sequences * world_size / stats.seconds,
                "tokens_per_s": stats.tokens * world_size / stats.seconds}


@dataclass
class FitResult:
    """Where the best validation was reached, what the run cost, and the test metrics of the best
    weights when the trainer was given a test."""

    best_valid: dict[str, float]
    best_epoch: int
    best_step: int
    epochs_run: int
    steps: int
    seconds: float
    seconds_to_best: float
    examples_per_second: float
    tokens_per_second: float
    test: dict[str, float] | None = None


class Trainer:
    """Trains ``model`` on ``batches``; validates every ``eval_every`` epochs (and after the last),
    keeps the best weights in ``run_dir/best`` and stops after ``patience`` validations without improvement.

    ``resume``: a restarted run continues exactly where the last one stopped, after ``kill -9`` too:
    ``run_dir/checkpoints`` holds weights, optimiser, scheduler, RNG and task states and the data
    position (epoch, batch), saved every ``checkpoint_every`` steps and after each validation. Without
    it a run starts from scratch and keeps only ``best/``. ``validate_untrained``: validate before the
    first step (epoch 0), the baseline every epoch must beat. ``test``: scored on the best weights at
    the end, logged and returned. After ``fit`` the model holds the best weights, in eval mode.

    ``train.strategy`` (``training.parallel``) decides how ranks hold the model: under "fsdp" on several
    ranks the model is sharded in place (after ``fit`` it still is; ``run_dir/best`` has the whole
    weights), every rank takes part in validation, export and checkpoints, and rank 0 still scores.
    """

    def __init__(self, model: torch.nn.Module, task_factory: Callable[[torch.nn.Module], LossTask],
                 batches: EpochBatches, validate: Validate, config: TrainConfig, *, run_dir: RunDir,
                 ctx: DistContext | None = None, manifest: dict[str, Any] | None = None, resume: bool = True,
                 validate_untrained: bool = False, test: Validate | None = None) -> None:
        if config.checkpoint_every and not resume:
            raise ValueError("train.checkpoint_every: this run keeps only the best checkpoint (it does not resume); "
                             "set it to 0")
        self.ctx = ctx or DistContext(0, 1, 0, resolve_device(config.device))
        self.raw_model = model.to(self.ctx.device)
        self.batches, self.validate, self.test, self.config = batches, validate, test, config
        self.run_dir, self.resume, self.validate_untrained = run_dir, resume, validate_untrained
        self.manifest = manifest or {}  # e.g. config and data checksum, stored with every checkpoint
        if config.activation_checkpointing:
            self.raw_model.set_activation_checkpointing(True)
        self.parallel = build_parallel(config, self.ctx)
        self.model = self.parallel.wrap(self.raw_model)
        if config.compile:
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, config)
        total = batches.steps_per_epoch * config.max_epochs
        self.scheduler: Any = LambdaLR(self.optimizer, warmup_cosine(total, config.warmup_steps, config.min_lr_ratio))
        # DeepSpeed's engine takes model, optimiser and schedule together (its JSON may name its own schedule)
        self.model, self.scheduler = self.parallel.attach(self.model, self.optimizer, self.scheduler,
                                                          total_steps=total)
        self.task = task_factory(self.model)
        self.ema = WeightEMA(self.raw_model, config.ema_decay) if config.ema_decay else None
        self.step_fn = self.parallel.train_step(self.model, self.task, self.optimizer, self.scheduler,
                                                after_update=self._after_update)
        self.log = run_dir.metrics_log

    def _after_update(self) -> None:
        """After each optimiser step: DeepSeek's aux-loss-free routing bias, then the weight average."""
        update_bias = getattr(self.raw_model, "update_routing_bias", None)
        if update_bias is not None:
            update_bias()
        if self.ema is not None:
            self.ema.update()

    def _validated_weights(self) -> contextlib.AbstractContextManager:
        """The weights validation, the best checkpoint and test see: the moving average when there is one."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    # -- state -----------------------------------------------------------------------------
    def _state(self, epoch: int, batch: int, step: int, best: dict[str, Any], bad: int, elapsed: float) -> dict:
        return {"epoch": epoch, "batch": batch, "global_step": step, "best": best, "bad_evals": bad,
                "elapsed": elapsed, "scheduler": self.scheduler.state_dict(), "manifest": self.manifest}

    def _start(self) -> dict[str, Any]:
        """The state to continue from: the latest checkpoint (``resume``), else a fresh run with an empty log."""
        state = self._resume() if self.resume else None
        if state is not None:
            return state
        if self.ctx.is_main:
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
            self.log.clear()  # a run killed before its first checkpoint starts over cleanly
        best = {"metric": -math.inf, "epoch": -1, "step": 0, "valid": {}, "elapsed": 0.0}
        return self._state(0, 0, 0, best, 0, 0.0)

    def _save(self, state: dict[str, Any]) -> None:
        own = {}
        task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else {}
        if task_state.get("generator_state") is not None:
            own["task_generator"] = task_state["generator_state"]
        self.parallel.save_checkpoint(self.run_dir.checkpoints, state["global_step"], self.raw_model, self.optimizer,
                                      state, rank_tensors=own, shared_tensors=self._shared_tensors())

    def _shared_tensors(self) -> dict[str, torch.Tensor]:
        """Checkpointed tensors laid out like the parameters: the averaged weights."""
        return self.ema.state_tensors() if self.ema is not None else {}

    def _resume(self) -> dict[str, Any] | None:
        path = latest_checkpoint(self.run_dir.checkpoints)
        if path is None:
            return None
        state, extra = self.parallel.load_checkpoint(path, self.raw_model, self.optimizer,
                                                     shared_tensors=self._shared_tensors())
        if "task_generator" in extra:
            self.task.load_state_dict({"seed": self.config.seed, "generator_state": extra["task_generator"]})
        if self.ema is not None:
            self.ema.load_state_tensors(extra)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ctx.is_main:
            self.log.truncate_after(state["global_step"])
        log.info("resumed from %s (epoch %d, batch %d): %s had checkpoints; use a new run directory to start over",
                 path, state["epoch"], state["batch"], self.run_dir.path)
        return state

    # -- validation ------------------------------------------------------------------------
    def _evaluate(self, score: Validate) -> dict[str, float]:
        self.raw_model.eval()
        with torch.inference_mode():
            return score()

    @property
    def _validates_here(self) -> bool:
        """Rank 0 validates; with sharded weights every other rank takes part (gathering, exporting)."""
        return self.ctx.is_main or self.parallel.sharded

    def _validation(self, epoch: int, step: int, elapsed: float, best: dict[str, Any],
                    bad: int) -> tuple[dict[str, Any], int]:
        """Validate and log; save the weights when they beat ``best``. Returns the new best and bad count
        (only rank 0's are ever read: it writes the checkpoint state)."""
        with self._validated_weights():
            with self.parallel.full_weights(self.raw_model):
                metrics = self._evaluate(self.validate) if self.ctx.is_main else {}
            improved = self.parallel.agree(self.ctx.is_main and self._log_validation(epoch, step, elapsed, metrics,
                                                                                      best))
            if improved:
                self.parallel.save_best(self.run_dir, self.raw_model,
                                        {"epoch": epoch, "step": step, "valid": metrics, **self.manifest})
        if not improved:
            return best, bad + 1
        if not self.ctx.is_main:
            return best, 0
        metric = metrics[self.config.select_metric]
        return {"metric": metric, "epoch": epoch, "step": step, "valid": metrics, "elapsed": elapsed}, 0

    def _log_validation(self, epoch: int, step: int, elapsed: float, metrics: dict[str, float],
                        best: dict[str, Any]) -> bool:
        """Log the validation metrics (rank 0); whether they beat ``best``."""
        metric = self.config.select_metric
        if metric not in metrics:
            raise ValueError(f"train.select_metric {metric!r} is not a validation metric; "
                             f"choose one of {sorted(metrics)}")
        self.log.append({"kind": "valid", "step": step, "epoch": epoch, "elapsed": elapsed, **metrics})
        log.info("epoch %d step %d valid %s=%.4f", epoch, step, metric, metrics[metric])
        return bool(metrics[metric] > best["metric"])  # a NaN never becomes the best

    def _finish(self) -> dict[str, float] | None:
        """Load the best weights and score ``test`` on them (rank 0; every rank takes part when sharded)."""
        test = None
        if self._validates_here:
            self.parallel.load_best(self.run_dir, self.raw_model)
            if self.test is not None:
                with self.parallel.full_weights(self.raw_model):
                    test = self._evaluate(self.test) if self.ctx.is_main else None
            if test is not None:
                self.log.append({"kind": "test", "step": -1, **test})
        barrier(self.ctx)
        self.raw_model.eval()
        return test

    # -- loop ------------------------------------------------------------------------------
    def _log_step(self, stats: StepStats, step: int, epoch: int) -> None:
        # world_size per step: an elastic job's resizes show in the log (docs/elastic.md)
        record = {"kind": "train", "step": step, "epoch": epoch, "loss": stats.loss, "lr": stats.lr,
                  "grad_norm": stats.grad_norm, "world_size": self.ctx.world_size,
                  **self.batches.throughput(stats, self.ctx.world_size), **stats.extra}
        if hasattr(self.raw_model, "expert_load"):  # MoE: share of tokens per expert, per layer
            record["expert_load"] = self.raw_model.expert_load()
        self.log.append(record)

    def fit(self) -> FitResult:
        cfg, ctx = self.config, self.ctx
        state = self._start()
        epoch, start_batch, step = state["epoch"], state["batch"], state["global_step"]
        best, bad, elapsed0 = state["best"], state["bad_evals"], state["elapsed"]
        t0 = time.perf_counter()
        examples = tokens = 0
        train_seconds = 0.0
        if self.validate_untrained and step == 0 and self._validates_here:
            best, bad = self._validation(epoch, step, elapsed0 + time.perf_counter() - t0, best, bad)
        stop = bad >= cfg.patience
        while epoch < cfg.max_epochs and not stop:
            total = self.batches.steps_per_epoch - start_batch
            bar = tqdm(self.batches.epoch(epoch, start_batch), desc=f"epoch {epoch}", unit="step",
                       total=total, disable=not ctx.is_main or None, leave=False)
            progress = progress_log(f"epoch {epoch + 1}/{cfg.max_epochs}", total, ctx.is_main)  # not a terminal
            for k, group in enumerate(bar, start=start_batch):
                stats = self.step_fn(group)
                step += 1
                examples, tokens = examples + stats.sequences, tokens + stats.tokens
                train_seconds += stats.seconds
                bar.set_postfix(loss=f"{stats.loss:.4f}", per_s=f"{stats.sequences / stats.seconds:.0f}")
                if progress is not None:
                    progress.update(loss=f"{stats.loss:.4f}")
                if ctx.is_main:
                    self._log_step(stats, step, epoch)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    self._save(self._state(epoch, k + 1, step, best, bad, elapsed0 + time.perf_counter() - t0))
            epoch, start_batch = epoch + 1, 0
            if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
                elapsed = elapsed0 + time.perf_counter() - t0
                if self._validates_here:
                    best, bad = self._validation(epoch, step, elapsed, best, bad)
                stop = broadcast_flag(bad >= cfg.patience, ctx)
                if self.resume:
                    self._save(self._state(epoch, 0, step, best, bad, elapsed))
        seconds = elapsed0 + time.perf_counter() - t0
        test = self._finish()
        self.parallel.close()
        rate = ctx.world_size / train_seconds if train_seconds else 0.0
        return FitResult(best_valid=best["valid"], best_epoch=best["epoch"], best_step=best["step"],
                         epochs_run=epoch, steps=step, seconds=seconds, seconds_to_best=best.get("elapsed", seconds),
                         examples_per_second=examples * rate, tokens_per_second=tokens * rate, test=test)
