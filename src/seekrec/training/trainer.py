"""The epoch trainer: the shared step over shuffled batches, validation, early stopping, resume."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from seekrec.data.sequences import SequenceDataset, SequenceLoader
from seekrec.data.splits import Split
from seekrec.evaluation.ranking import EvalBatch, evaluate
from seekrec.io import atomic_path, atomic_write_json
from seekrec.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, barrier, broadcast_flag, wrap_ddp
from seekrec.training.metrics_log import MetricsLog
from seekrec.training.step import LossTask, TrainStep, build_optimizer, warmup_cosine

log = logging.getLogger(__name__)
BEST_DIR = "best"


class ModelScorer:
    """Adapts a next-item model to the evaluator: score every item from the last ``max_len`` items."""

    def __init__(self, model: torch.nn.Module, max_len: int) -> None:
        self.model, self.max_len = model, max_len

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.model.score_all(batch.history[:, -self.max_len :])


@dataclass
class TrainResult:
    best_valid: dict[str, float]
    test: dict[str, float] | None
    best_epoch: int
    best_step: int
    epochs_run: int
    steps: int
    seconds: float
    seconds_to_best: float
    sequences_per_second: float
    tokens_per_second: float


class Trainer:
    """Trains ``model`` on ``split.train`` and selects the checkpoint on validation.

    Everything needed to continue after ``kill -9`` lives in ``run_dir/checkpoints``: weights,
    optimiser, scheduler, RNG and sampler states, and the data position (epoch, batch).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        task_factory: Callable[[torch.nn.Module], LossTask],
        split: Split,
        n_items: int,
        dataset: SequenceDataset,
        config: TrainConfig,
        run_dir: Path,
        ctx: DistContext,
        max_len: int,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.raw_model = model.to(ctx.device)
        self.split, self.n_items, self.config = split, n_items, config
        self.run_dir, self.ctx, self.max_len = Path(run_dir), ctx, max_len
        self.manifest = manifest or {}  # e.g. config and data checksum, stored with every checkpoint
        micro = config.batch_size // config.grad_accum if config.batch_size % config.grad_accum == 0 else None
        if micro is None:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum")
        self.loader = SequenceLoader(dataset, micro, seed=config.seed, rank=ctx.rank, world_size=ctx.world_size)
        self.steps_per_epoch = math.ceil(len(self.loader) / config.grad_accum)
        if config.activation_checkpointing:
            self.raw_model.set_activation_checkpointing(True)
        self.model = wrap_ddp(self.raw_model, ctx)
        if config.compile:
            self.model = torch.compile(self.model)
        self.task = task_factory(self.model)
        self.optimizer = build_optimizer(self.raw_model, config)
        total = self.steps_per_epoch * config.max_epochs
        self.scheduler = LambdaLR(self.optimizer, warmup_cosine(total, config.warmup_steps, config.min_lr_ratio))
        self.step_fn = TrainStep(self.model, self.task, self.optimizer, self.scheduler, config, ctx,
                                 after_update=getattr(self.raw_model, "update_routing_bias", None))
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.ckpt_root = self.run_dir / "checkpoints"

    # -- state -----------------------------------------------------------------------------
    def _state(self, epoch: int, batch: int, step: int, best: dict[str, Any], bad: int, elapsed: float) -> dict:
        return {"epoch": epoch, "batch": batch, "global_step": step, "best": best, "bad_evals": bad,
                "elapsed": elapsed, "scheduler": self.scheduler.state_dict(), "manifest": self.manifest}

    def _save(self, state: dict[str, Any]) -> None:
        if self.ctx.is_main:
            extra = {}
            task_state = self.task.state_dict() if hasattr(self.task, "state_dict") else {}
            if task_state.get("generator_state") is not None:
                extra["task_generator"] = task_state["generator_state"]
            save_checkpoint(self.ckpt_root, state["global_step"], self.raw_model, self.optimizer, state, extra)
        barrier(self.ctx)

    def _resume(self) -> dict[str, Any] | None:
        path = latest_checkpoint(self.ckpt_root)
        if path is None:
            if self.ctx.is_main:
                self.log.clear()  # a run killed before its first checkpoint starts over cleanly
            return None
        state, extra = load_checkpoint(path, self.raw_model, self.optimizer)
        if "task_generator" in extra:
            self.task.load_state_dict({"seed": self.config.seed, "generator_state": extra["task_generator"]})
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ctx.is_main:
            self.log.truncate_after(state["global_step"])
        log.info("resumed from %s (epoch %d, batch %d)", path.name, state["epoch"], state["batch"])
        return state

    def _save_best(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        best_dir = self.run_dir / BEST_DIR
        best_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(best_dir / "model.safetensors") as tmp:
            save_model(self.raw_model, str(tmp))
        atomic_write_json(best_dir / "meta.json", {"epoch": epoch, "step": step, "valid": metrics, **self.manifest})

    def validate(self, which: str = "valid") -> dict[str, float]:
        self.raw_model.eval()
        result = evaluate(ModelScorer(self.raw_model, self.max_len), self.split.eval_set(which), self.n_items,
                          batch_size=self.config.eval_batch_size, device=self.ctx.device)
        return result.metrics

    # -- loop ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        state = self._resume() or self._state(0, 0, 0, {"metric": -1.0, "epoch": -1, "step": 0, "valid": {},
                                                         "elapsed": 0.0}, 0, 0.0)
        epoch, start_batch, step = state["epoch"], state["batch"], state["global_step"]
        best, bad, elapsed0 = state["best"], state["bad_evals"], state["elapsed"]
        t0 = time.perf_counter()
        seqs = tokens = 0
        train_seconds = 0.0
        stop = bad >= cfg.patience
        while epoch < cfg.max_epochs and not stop:
            micro = list(self.loader.iter_epoch(epoch, start_batch * cfg.grad_accum))
            groups = [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
            bar = tqdm(groups, desc=f"epoch {epoch}", unit="step", disable=not self.ctx.is_main or None, leave=False)
            for k, group in enumerate(bar, start=start_batch):
                stats = self.step_fn(group)
                step += 1
                seqs, tokens, train_seconds = seqs + stats.sequences, tokens + stats.tokens, train_seconds + stats.seconds
                bar.set_postfix(loss=f"{stats.loss:.4f}", seq_s=f"{stats.sequences / stats.seconds:.0f}")
                if self.ctx.is_main:
                    record = {"kind": "train", "step": step, "epoch": epoch, "loss": stats.loss, "lr": stats.lr,
                              "grad_norm": stats.grad_norm,
                              "seq_per_s": stats.sequences * self.ctx.world_size / stats.seconds,
                              "tokens_per_s": stats.tokens * self.ctx.world_size / stats.seconds, **stats.extra}
                    if hasattr(self.raw_model, "expert_load"):  # MoE: share of tokens per expert, per layer
                        record["expert_load"] = self.raw_model.expert_load()
                    self.log.append(record)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    elapsed = elapsed0 + time.perf_counter() - t0
                    self._save(self._state(epoch, k + 1, step, best, bad, elapsed))
            epoch, start_batch = epoch + 1, 0
            if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
                elapsed = elapsed0 + time.perf_counter() - t0
                if self.ctx.is_main:
                    metrics = self.validate("valid")
                    self.log.append({"kind": "valid", "step": step, "epoch": epoch, "elapsed": elapsed, **metrics})
                    log.info("epoch %d step %d valid %s=%.4f", epoch, step, cfg.select_metric, metrics[cfg.select_metric])
                    if metrics[cfg.select_metric] > best["metric"]:
                        best = {"metric": metrics[cfg.select_metric], "epoch": epoch, "step": step,
                                "valid": metrics, "elapsed": elapsed}
                        bad = 0
                        self._save_best(metrics, epoch, step)
                    else:
                        bad += 1
                stop = broadcast_flag(bad >= cfg.patience, self.ctx)
                self._save(self._state(epoch, 0, step, best, bad, elapsed))
        seconds = elapsed0 + time.perf_counter() - t0
        test = self._test_best() if self.ctx.is_main else None
        barrier(self.ctx)
        return TrainResult(
            best_valid=best["valid"], test=test, best_epoch=best["epoch"], best_step=best["step"], epochs_run=epoch,
            steps=step, seconds=seconds, seconds_to_best=best.get("elapsed", seconds),
            sequences_per_second=seqs * self.ctx.world_size / train_seconds if train_seconds else 0.0,
            tokens_per_second=tokens * self.ctx.world_size / train_seconds if train_seconds else 0.0,
        )

    def _test_best(self) -> dict[str, float]:
        """Test metrics of the best validation checkpoint only."""
        best_file = self.run_dir / BEST_DIR / "model.safetensors"
        if not best_file.exists():
            raise RuntimeError(f"no best checkpoint in {best_file.parent}: validation never ran")
        load_model(self.raw_model, str(best_file))
        metrics = self.validate("test")
        self.log.append({"kind": "test", "step": -1, **metrics})
        return metrics
