"""torch.distributed set-up in one place: read torchrun's environment, pick device and backend.

Single process when ``WORLD_SIZE`` is unset; under ``torchrun`` one process per rank (NCCL on GPUs,
gloo on CPU), with the model replicated (DDP) or sharded (FSDP, ``training.parallel``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else CPU; otherwise as given."""
    if preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no GPU is visible; use device='auto' or 'cpu'")
    return device


def init_distributed(device_preference: str = "auto", timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes (if any) and return this process's context.

    ``timeout_s``: how long any collective of the group waits for a peer before it raises (None: torch's
    default), so a hung peer ends the workers and torchrun can restart them (``TrainConfig.dist_timeout_s``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
        dist.init_process_group(backend=backend, timeout=timeout)
    return DistContext(rank, world_size, local_rank, device)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DDP-wrap ``model`` when running distributed; the bare model otherwise."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def is_fully_sharded(model: torch.nn.Module) -> bool:
    """Whether ``fully_shard`` (FSDP2) was applied to ``model``: its parameters and gradients are DTensor shards."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6 has no public FSDP2, so nothing can be sharded with it
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def skip_gradient_sync(model: torch.nn.Module) -> Iterator[None]:
    """Backward passes in the block keep their gradients on this rank (accumulated, not yet averaged):
    DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``; nothing to do for a bare model."""
    if is_fully_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if no_sync is not None else contextlib.nullcontext():
        yield


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's decision (e.g. early stop) for every rank."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], device=ctx.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
