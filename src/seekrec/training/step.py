"""One optimiser step over micro-batches: the unit both offline epochs and the online stream run.

Gradients of ``grad_accum`` micro-batches (on every rank) are combined so the update equals one
step on the whole global batch: each micro-batch's summed loss is divided by the number of
targets in the whole global batch, and multiplied by ``world_size`` to undo the averaging of DDP's
all-reduce or FSDP's reduce-scatter. Only the last micro-batch synchronises gradients.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, all_reduce_sum, is_fully_sharded, skip_gradient_sync


class LossTask(Protocol):
    """Turns a batch into a mean loss over its targets; ``stats["n_targets"]`` counts them.

    The task holds the (possibly DDP-wrapped) model, so its forward synchronises gradients.
    """

    def step_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def count_targets(batch: Any) -> int:
    """Targets in ``batch``: its ``n_targets`` when it has one (feature batches: one per row), else the
    non-padding entries of ``target_ids`` (next-item batches). Must match the task's ``stats["n_targets"]``."""
    n_targets = getattr(batch, "n_targets", None)
    if n_targets is not None:
        return int(n_targets)
    return int((batch.target_ids > 0).sum())


@dataclass
class StepStats:
    loss: float
    lr: float
    grad_norm: float
    sequences: int
    tokens: int
    seconds: float
    extra: dict[str, float]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases, norms and embeddings get no weight decay (the usual transformer recipe)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "embed" in name or "norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm``; returns the norm before clipping.

    FSDP gradients are DTensor shards: torch computes the norm over all ranks (a replicated DTensor),
    so every rank clips by the same factor and reports the same norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full_tensor = getattr(norm, "full_tensor", None)  # a DTensor under FSDP
    return float((full_tensor() if full_tensor is not None else norm).item())


def make_grad_scaler(model: torch.nn.Module) -> torch.amp.GradScaler:
    """fp16's loss scaler. Under FSDP each rank sees only its gradient shards, so the sharded scaler
    all-reduces "found inf" and every rank skips (or takes) the same steps."""
    if is_fully_sharded(model):
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler("cuda")
    return torch.amp.GradScaler("cuda")


def global_targets(micro_batches: Sequence[Any], ctx: DistContext) -> tuple[int, float, float]:
    """``(this rank's targets, all ranks' targets, loss scale)``: each micro-batch's summed loss times the scale
    is its share of the mean over the whole global batch (times ``world_size``, which DDP / FSDP average away)."""
    n_targets = sum(count_targets(b) for b in micro_batches)
    total = all_reduce_sum(torch.tensor(float(n_targets), device=ctx.device), ctx).item()
    return n_targets, total, ctx.world_size / max(total, 1.0)


def check_grad_norm(grad_norm: float) -> None:
    """A non-finite gradient norm (without fp16 loss scaling, which skips such steps) means training diverged."""
    if not math.isfinite(grad_norm):
        raise FloatingPointError(
            f"gradient norm is {grad_norm}: training diverged. Lower train.lr or enable train.clip_norm"
        )


def global_stats(micro_batches: Sequence[Any], loss_total: float, targets: tuple[int, float], *, lr: float,
                 grad_norm: float, start: float, extras: dict[str, float], ctx: DistContext) -> StepStats:
    """The step's record: the mean loss over all ranks' targets, this rank's sequences and targets, time."""
    n_targets, total = targets
    global_loss = all_reduce_sum(torch.tensor(loss_total, device=ctx.device), ctx).item()
    return StepStats(loss=global_loss / max(total, 1.0), lr=lr, grad_norm=grad_norm,
                     sequences=sum(len(b) for b in micro_batches), tokens=n_targets,
                     seconds=time.perf_counter() - start, extra=extras)


class TrainStep:
    """Forward, backward and update for one global batch given as micro-batches."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: LossTask,
        optimizer: torch.optim.Optimizer,
        scheduler: LambdaLR,
        config: TrainConfig,
        ctx: DistContext,
        after_update: Callable[[], None] | None = None,
    ) -> None:
        self.model, self.task, self.optimizer, self.scheduler = model, task, optimizer, scheduler
        self.config, self.ctx, self.after_update = config, ctx, after_update
        if config.precision == "fp16" and ctx.device.type != "cuda":
            raise ValueError("train.precision='fp16' needs a GPU (GradScaler); use 'bf16' on CPU")
        self.scaler = make_grad_scaler(model) if config.precision == "fp16" else None

    def __call__(self, micro_batches: Sequence[Any]) -> StepStats:
        start = time.perf_counter()
        self.model.train()
        n_targets, total, scale = global_targets(micro_batches, self.ctx)
        loss_total, extras = 0.0, {}
        for k, batch in enumerate(micro_batches):
            batch = batch.to(self.ctx.device, non_blocking=True)
            sync = k == len(micro_batches) - 1
            with (contextlib.nullcontext() if sync else skip_gradient_sync(self.model)):
                with autocast_context(self.config.precision, self.ctx.device):
                    loss_mean, stats = self.task.step_loss(batch)
                loss_sum = loss_mean.float() * stats["n_targets"]  # mean -> sum over this micro-batch
                loss = loss_sum * scale
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_total += loss_sum.item()
            extras = {k: float(v) for k, v in stats.items() if k not in ("loss", "n_targets")}
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.clip_norm if self.config.clip_norm is not None else float("inf")
        grad_norm = clip_gradients(params, clip) if params else 0.0
        if self.scaler is None:
            check_grad_norm(grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if self.after_update is not None:
            self.after_update()
        return global_stats(micro_batches, loss_total, (n_targets, total), lr=lr, grad_norm=grad_norm, start=start,
                            extras=extras, ctx=self.ctx)
