"""``train.strategy = "deepspeed"``: DeepSpeed's engine as the third parallel strategy beside ``Replicated`` (DDP) and
``Sharded`` (FSDP), configured by a user's ``ds_config.json`` (``training.deepspeed_config``); behind the
``deepspeed`` extra (``pip install 'seekrec[deepspeed]'``).

seekrec keeps what makes runs comparable across the three strategies: its AdamW and parameter groups, the data and
its sharding, the step's loss normalisation (each micro-batch's summed loss over the global batch's targets, times
the world size to undo the engine's gradient averaging), validation on rank 0, the single-file best weights and the
run directory. The engine owns backward (fp16 loss scaling), the ZeRO stage 1 / 2 partitioned gradients and
optimiser state, clipping, the optimiser step, the JSON's scheduler when it names one, and its checkpoint files.

ZeRO stages 1 and 2 partition optimiser state (and gradients) but keep the whole parameters on every rank, so rank 0
validates and exports alone, as under DDP. Stage 3 is refused (``train.strategy = "fsdp"`` shards parameters).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from seekrec.training.checkpoint import CheckpointError
from seekrec.training.config import TrainConfig
from seekrec.training.deepspeed_config import (
    DEEPSPEED_TAG,
    engine_config,
    is_deepspeed_checkpoint,
    read_ds_config,
)
from seekrec.training.distributed import DistContext, barrier
from seekrec.training.parallel import Replicated
from seekrec.training.run_dir import RunDir
from seekrec.training.sharded_checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    fsync_file,
    read_checkpoint_state,
    read_rank_state,
    write_rank_state,
)
from seekrec.training.step import LossTask, StepStats, check_grad_norm, global_stats, global_targets

log = logging.getLogger(__name__)
FORMAT = "deepspeed"


def import_deepspeed() -> Any:
    """The ``deepspeed`` module, or an ImportError that says how to install it."""
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError("train.strategy = 'deepspeed' needs DeepSpeed: pip install 'seekrec[deepspeed]' (no CUDA "
                          "ops are compiled at install; DeepSpeed builds what it needs when it first runs)") from exc
    return deepspeed


class DeepSpeedEngine(Replicated):
    """``train.strategy = "deepspeed"``: the model, seekrec's AdamW and schedule inside ``deepspeed.initialize``."""

    name = "deepspeed"

    def __init__(self, ctx: DistContext, config: TrainConfig) -> None:
        super().__init__(ctx, config)
        if config.deepspeed_config is None:
            raise ValueError("train.strategy = 'deepspeed' needs train.deepspeed_config "
                             "(seekrec train --deepspeed FILE)")
        self.ds_config = read_ds_config(config.deepspeed_config)
        self.engine: Any = None
        self._own_group = False

    def wrap(self, model: nn.Module) -> nn.Module:
        """The engine needs the optimiser, so it is built in ``attach``; until then the bare model."""
        return model

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, *,
               total_steps: int) -> tuple[nn.Module, Any]:
        """``deepspeed.initialize`` on the model, seekrec's AdamW and (unless the JSON names its own) its schedule;
        returns the engine (what the task calls forward on) and the scheduler the engine steps."""
        deepspeed = import_deepspeed()
        config = engine_config(self.config, self.ds_config, world_size=self.ctx.world_size, total_steps=total_steps,
                               source=str(self.config.deepspeed_config))
        if not dist.is_initialized():
            # DeepSpeed always communicates through a process group and reads LOCAL_RANK; in one process without a
            # launcher it would look for MPI, so it gets a group of one and the variables a launcher would set
            dist.init_process_group("nccl" if self.ctx.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1)
            self._own_group = True
            for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                os.environ.setdefault(name, value)
        own_schedule = "scheduler" in config
        engine, _, _, engine_scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=None if own_schedule else scheduler, config=config)
        if torch.device(engine.device).type != self.ctx.device.type:
            raise ValueError(f"DeepSpeed placed the model on {engine.device} but train.device resolves to "
                             f"{self.ctx.device}; set DS_ACCELERATOR=cpu (or cuda) to match")
        if self.ctx.is_main:
            log.info("DeepSpeed engine: ZeRO stage %d, %s, micro-batch %d per rank, scheduler %s",
                     engine.zero_optimization_stage(), self.config.precision, config["train_micro_batch_size_per_gpu"],
                     config["scheduler"]["type"] if own_schedule else "seekrec warmup + cosine")
        self.engine = engine
        return engine, engine_scheduler

    def train_step(self, model: nn.Module, task: LossTask, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                   after_update: Callable[[], None] | None = None) -> DeepSpeedStep:
        return DeepSpeedStep(model, task, scheduler, self.config, self.ctx, after_update=after_update)

    def save_best(self, run_dir: RunDir, model: nn.Module, meta: dict[str, Any]) -> None:
        """The module's weights (whole on every rank under ZeRO 1 / 2) as fp32, written by rank 0: under fp16 / bf16
        the engine keeps the module in that dtype, and readers of ``best/`` expect fp32."""
        if self.ctx.is_main:  # copies: the engine's parameters are views into its flat buffers
            weights = {name: (t.float() if t.is_floating_point() else t).detach().cpu().clone()
                       for name, t in model.state_dict().items()}
            run_dir.save_best_weights(weights, meta)

    def load_best(self, run_dir: RunDir, model: nn.Module) -> None:
        """The best weights copied into rank 0's module (in its dtype; safetensors' ``load_model`` refuses the
        engine's parameters, which are views into flat buffers)."""
        if self.ctx.is_main:
            model.load_state_dict(run_dir.read_best_weights())

    def save_checkpoint(self, root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], *, rank_tensors: dict[str, Tensor],
                        shared_tensors: dict[str, Tensor]) -> None:
        """``root/step-<step>``: DeepSpeed's files (module, each rank's optimiser partition, scheduler) under
        ``deepspeed/``, each rank's RNG and sampler state, ``state.json``; written atomically like the others.
        ``shared_tensors`` (the weight average, the same on every rank) go into rank 0's file."""
        tmp = begin_checkpoint(root, step, self.ctx)
        self.engine.save_checkpoint(str(tmp), tag=DEEPSPEED_TAG, save_latest=False)
        write_rank_state(tmp, self.ctx, {**rank_tensors, **(shared_tensors if self.ctx.is_main else {})})
        barrier(self.ctx)  # every rank's DeepSpeed files are complete before rank 0 flushes them
        if self.ctx.is_main:
            for file in (tmp / DEEPSPEED_TAG).rglob("*"):
                if file.is_file():
                    fsync_file(file)
        commit_checkpoint(root, tmp, {"step": step, "format": FORMAT, "world_size": self.ctx.world_size, **state},
                          self.ctx)

    def load_checkpoint(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        shared_tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Restore ``path`` into the engine (module, optimiser partitions, scheduler), this rank's RNG and sampler,
        and the shared tensors from rank 0's file. ZeRO partitions fit only the world size that wrote them."""
        if not is_deepspeed_checkpoint(path):
            raise CheckpointError(f"{path} was not written with train.strategy = 'deepspeed'; resume with the strategy "
                                  "it was written with, or start a new run directory")
        state = read_checkpoint_state(path)
        if state.get("world_size") != self.ctx.world_size:
            raise CheckpointError(f"{path} was written by {state.get('world_size')} DeepSpeed ranks and this run has "
                                  f"{self.ctx.world_size}: ZeRO optimiser partitions resume on the world size that "
                                  "wrote them; start the job with that many processes")
        try:
            loaded, _ = self.engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be loaded by DeepSpeed: {exc}; resume with the config it "
                                  "was written with, or delete it to fall back to an older one") from exc
        if loaded is None:
            raise CheckpointError(f"checkpoint {path}: DeepSpeed found no {DEEPSPEED_TAG}/ files; delete it to fall "
                                  "back to an older one")
        extras = read_rank_state(path, self.ctx, state)
        if shared_tensors and not self.ctx.is_main:
            rank0 = read_rank_state(path, self.ctx, state, restore_rng=False, rank=0)
            extras.update({k: v for k, v in rank0.items() if k in shared_tensors})
        return state, extras

    def close(self) -> None:
        """Release the one-process group made for DeepSpeed (under a launcher the group is the job's)."""
        if self._own_group and dist.is_initialized():
            dist.destroy_process_group()
            self._own_group = False


class DeepSpeedStep:
    """``TrainStep`` through the engine: the same loss normalisation over the global batch's targets; the engine's
    backward (fp16 loss scaling; ZeRO-2 reduces gradients as they are produced) and one ``engine.step()`` per global
    batch, its accumulation boundary set on the last micro-batch (epochs may end in a shorter group)."""

    def __init__(self, engine: Any, task: LossTask, scheduler: Any, config: TrainConfig, ctx: DistContext, *,
                 after_update: Callable[[], None] | None = None) -> None:
        self.engine, self.task, self.scheduler = engine, task, scheduler
        self.config, self.ctx, self.after_update = config, ctx, after_update

    def __call__(self, micro_batches: Sequence[Any]) -> StepStats:
        start = time.perf_counter()
        self.engine.train()
        n_targets, total, scale = global_targets(micro_batches, self.ctx)
        loss_total, extras = 0.0, {}
        for k, batch in enumerate(micro_batches):
            batch = batch.to(self.ctx.device, non_blocking=True)
            self.engine.set_gradient_accumulation_boundary(k == len(micro_batches) - 1)
            loss_mean, stats = self.task.step_loss(batch)
            loss_sum = loss_mean.float() * stats["n_targets"]  # mean -> sum over this micro-batch
            self.engine.backward(loss_sum * scale, scale_wrt_gas=False)  # seekrec scales over the global batch
            loss_total += loss_sum.item()
            extras = {key: float(v) for key, v in stats.items() if key not in ("loss", "n_targets")}
        lr = self.scheduler.get_last_lr()[0]
        self.engine.step()  # clip, step, scheduler, zero the gradients (skipped on an fp16 overflow)
        norm = self.engine.get_global_grad_norm()
        grad_norm = float(norm.item() if isinstance(norm, Tensor) else norm) if norm is not None else 0.0
        if self.config.precision != "fp16":
            check_grad_norm(grad_norm)
        if self.after_update is not None:
            self.after_update()
        return global_stats(micro_batches, loss_total, (n_targets, total), lr=lr, grad_norm=grad_norm, start=start,
                            extras=extras, ctx=self.ctx)
