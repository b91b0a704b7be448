"""Data parallelism across torchrun ranks, ``train.strategy``: replicated (DDP), fully sharded (FSDP2), or
DeepSpeed's engine (``training.deepspeed_strategy``, behind the ``deepspeed`` extra).

Everything the trainer does that depends on how the weights are laid out over ranks goes through one of
these objects: wrapping the model (and, for DeepSpeed, the optimiser and schedule), the step function, giving
rank 0 the whole model to validate, exporting the best weights as one safetensors file and loading them back,
and writing / reading resumable checkpoints.

``ddp`` (``Replicated``): every rank holds the whole model (``DistributedDataParallel``); rank 0
validates, exports and writes checkpoints alone (``training.checkpoint``, safetensors).

``fsdp`` (``Sharded``): ``fully_shard`` is applied to each of the model's ``fsdp_units()`` and then to
the model, so each of W ranks holds 1/W of the parameters, gradients and AdamW state (DTensors sharded on
dim 0), and a unit's whole weights exist only while it runs. ``train.precision`` becomes the
``MixedPrecisionPolicy`` (bf16 / fp16 gathered weights, gradients reduced in fp32). Validation and export
need the whole model, so on several ranks they are collective: ``full_weights`` all-gathers every unit
for rank 0's validation, ``save_best`` gathers a full CPU state dict on rank 0. Checkpoints are sharded
DCP directories (``training.sharded_checkpoint``) that reshard on load. In one process there is nothing
to shard: the bare model trains as under ``ddp``, but checkpoints are still DCP ones, so a run can
resume on any number of ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from seekrec.models.base import ShardableModel
from seekrec.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.deepspeed_config import is_deepspeed_checkpoint
from seekrec.training.distributed import DistContext, barrier, broadcast_flag, wrap_ddp
from seekrec.training.run_dir import RunDir
from seekrec.training.sharded_checkpoint import (
    is_sharded_checkpoint,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from seekrec.training.step import LossTask, TrainStep, autocast_context

PARAM_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Replicated:
    """``train.strategy = "ddp"``: the whole model on every rank; rank 0 validates, exports and checkpoints."""

    name = "ddp"

    def __init__(self, ctx: DistContext, config: TrainConfig) -> None:
        self.ctx, self.config = ctx, config

    @property
    def sharded(self) -> bool:
        """Whether each rank holds only part of the weights; then validation, export and loading the best
        weights are collective and every rank must take part."""
        return False

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the task calls forward on (DDP under torchrun, ``model`` itself in one process)."""
        return wrap_ddp(model, self.ctx)

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, *,
               total_steps: int) -> tuple[nn.Module, Any]:
        """After the optimiser and schedule exist: the module the task calls forward on and the scheduler the
        step advances (these two as they are; DeepSpeed's engine takes all three)."""
        return model, scheduler

    def train_step(self, model: nn.Module, task: LossTask, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                   after_update: Callable[[], None] | None = None) -> Callable[[Any], Any]:
        """The function the trainer calls on each global batch's micro-batches."""
        return TrainStep(model, task, optimizer, scheduler, self.config, self.ctx, after_update=after_update)

    def close(self) -> None:
        """Release what the strategy holds beyond the model (nothing for DDP and FSDP)."""

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[None]:
        """Inside the block rank 0 can call any method of ``model`` on its whole weights, alone."""
        yield

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. "a new best") on every rank that takes part in validation."""
        return flag

    def save_best(self, run_dir: RunDir, model: nn.Module, meta: dict[str, Any]) -> None:
        """``run_dir/best``: the weights as one safetensors file, for evaluation, serving and the registry."""
        if self.ctx.is_main:
            run_dir.save_best(model, meta)

    def load_best(self, run_dir: RunDir, model: nn.Module) -> None:
        """The best weights back into the model rank 0 tests (the only copy that is evaluated)."""
        if self.ctx.is_main:
            run_dir.load_best(model)

    def save_checkpoint(self, root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], *, rank_tensors: dict[str, Tensor],
                        shared_tensors: dict[str, Tensor]) -> None:
        """A resumable checkpoint ``root/step-<step>``; ranks hold the same weights, so rank 0 writes it."""
        if self.ctx.is_main:
            save_checkpoint(root, step, model, optimizer, state, {**rank_tensors, **shared_tensors})
        barrier(self.ctx)

    def load_checkpoint(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        shared_tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Restore ``path`` into model and optimiser; returns its JSON state and extra tensors (rank 0's
        generator, the averaged weights). ``shared_tensors`` is unused: they come back in the extras."""
        if is_sharded_checkpoint(path):
            raise CheckpointError(f"{path} was written with train.strategy = 'fsdp' (a sharded DCP checkpoint); "
                                  "resume with train.strategy = 'fsdp', or start a new run directory")
        _refuse_deepspeed_checkpoint(path)
        return load_checkpoint(path, model, optimizer)


class Sharded(Replicated):
    """``train.strategy = "fsdp"``: parameters, gradients and optimiser state sharded over the ranks."""

    name = "fsdp"

    def __init__(self, ctx: DistContext, config: TrainConfig) -> None:
        super().__init__(ctx, config)
        self._units: list[nn.Module] = []
        self._root: nn.Module | None = None

    @property
    def sharded(self) -> bool:
        return self.ctx.enabled

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.sharded:
            self._units = shard_model(model, self.ctx, self.config.precision)
            self._root = model
        return model

    @contextlib.contextmanager
    def full_weights(self, model: nn.Module) -> Iterator[None]:
        """Every rank all-gathers every unit and keeps it gathered through the block, so that rank 0 can run
        validation alone (no forward of it needs a collective). The weights are in the policy's dtype, so the
        block runs under autocast of that dtype. Memory: one whole copy of the weights per rank meanwhile."""
        if not self.sharded:
            yield
            return
        modules = [*self._units, model]
        for module in modules:
            module.unshard()
        model.set_reshard_after_forward(False)  # recursive: no unit frees its weights after a forward
        try:
            with autocast_context(self.config.precision, self.ctx.device):
                yield
        finally:
            for module in modules:
                module.reshard()
            for unit in self._units:
                unit.set_reshard_after_forward(True, recurse=False)
            # rank 0's forwards in the block were recorded as this iteration's (FSDP prefetches the backward in
            # reverse forward order): forget them, or rank 0 alone would prefetch a unit in the next backward
            forget_forwards(model)

    def agree(self, flag: bool) -> bool:
        return broadcast_flag(flag, self.ctx) if self.sharded else flag

    def save_best(self, run_dir: RunDir, model: nn.Module, meta: dict[str, Any]) -> None:
        if not self.sharded:
            return super().save_best(run_dir, model, meta)
        weights = full_state_dict(model)  # collective; whole on rank 0, empty elsewhere
        if self.ctx.is_main:
            run_dir.save_best_weights(weights, meta)
        barrier(self.ctx)
        return None

    def load_best(self, run_dir: RunDir, model: nn.Module) -> None:
        """Every rank's shards of the best weights (rank 0 reads the file and broadcasts)."""
        if not self.sharded:
            return super().load_best(run_dir, model)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        weights = run_dir.read_best_weights() if self.ctx.is_main else {}
        set_model_state_dict(model, weights,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        return None

    def save_checkpoint(self, root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: dict[str, Any], *, rank_tensors: dict[str, Tensor],
                        shared_tensors: dict[str, Tensor]) -> None:
        save_sharded_checkpoint(root, step, model, optimizer, state, self.ctx, rank_tensors=rank_tensors,
                                shared_tensors=shared_tensors)

    def load_checkpoint(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                        shared_tensors: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """Restore ``path``, written by any number of ranks; ``shared_tensors`` are filled in place."""
        _refuse_deepspeed_checkpoint(path)
        if not is_sharded_checkpoint(path):
            raise CheckpointError(f"{path} was written with train.strategy = 'ddp' (one safetensors file per "
                                  "checkpoint); resume with train.strategy = 'ddp', or start a new run directory")
        return load_sharded_checkpoint(path, model, optimizer, self.ctx, shared_tensors=shared_tensors)


def _refuse_deepspeed_checkpoint(path: Path) -> None:
    if is_deepspeed_checkpoint(path):
        raise CheckpointError(f"{path} was written with train.strategy = 'deepspeed'; resume with train.strategy = "
                              "'deepspeed' (seekrec train --deepspeed FILE), or start a new run directory")


STRATEGY_CLASSES: dict[str, type[Replicated]] = {"ddp": Replicated, "fsdp": Sharded}


def build_parallel(config: TrainConfig, ctx: DistContext) -> Replicated:
    """The ``Replicated``, ``Sharded`` or ``DeepSpeedEngine`` strategy that ``config.strategy`` names (DeepSpeed's
    module is imported only when it is asked for: it is an optional extra)."""
    if config.strategy == "deepspeed":
        from seekrec.training.deepspeed_strategy import DeepSpeedEngine

        return DeepSpeedEngine(ctx, config)
    return STRATEGY_CLASSES[config.strategy](ctx, config)


def shard_model(model: nn.Module, ctx: DistContext, precision: str = "fp32") -> list[nn.Module]:
    """``fully_shard`` each of ``model.fsdp_units()`` (innermost first) and then ``model``, over all ranks, in
    place; returns the units. Units free their gathered weights after their forward; the root keeps its
    own until backward, which needs them first."""
    if not isinstance(model, ShardableModel):
        raise TypeError(f"{type(model).__name__} does not name its FSDP units (no fsdp_units(), see "
                         "models.base.ShardableModel); train it with train.strategy = 'ddp'")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    units = model.fsdp_units()
    depth = {id(module): name.count(".") + 1 for name, module in model.named_modules() if name}
    strangers = [type(u).__name__ for u in units if id(u) not in depth]
    if strangers or len({id(u) for u in units}) != len(units):
        raise ValueError(f"{type(model).__name__}.fsdp_units() must list distinct submodules of the model; "
                         f"not submodules: {strangers}")
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[precision], reduce_dtype=torch.float32)
    for unit in sorted(units, key=lambda u: -depth[id(u)]):  # bottom-up, as fully_shard requires
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    for method in getattr(model, "fsdp_forward_methods", ()):
        register_fsdp_forward_method(model, method)
    # FSDP makes the first module to run forward its root; validation may call a unit first (e.g. the item
    # table in score_all), so settle the root now. No public call does this in torch 2.13.
    model._get_fsdp_state()._lazy_init()
    return units


def forget_forwards(model: nn.Module) -> None:
    """Clear the forward order FSDP recorded since the last backward (``reset_iter_state``, torch >= 2.13; the
    same two lists by hand before it)."""
    reset = getattr(model, "reset_iter_state", None)
    if reset is not None:
        reset()
        return
    state = model._get_fsdp_state()
    state._comm_ctx.post_forward_order.clear()
    for module_state in state._state_ctx.all_states:
        for group in module_state._fsdp_param_groups:
            group._post_forward_indices.clear()


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole weights as CPU tensors on rank 0 (empty on the other ranks); collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
