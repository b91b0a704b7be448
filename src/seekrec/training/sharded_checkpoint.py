"""Sharded resumable checkpoints for ``train.strategy = "fsdp"``, through ``torch.distributed.checkpoint`` (DCP).

A checkpoint is a directory ``step-<N>/`` holding

* DCP's ``.metadata`` and one ``__<rank>_0.distcp`` file per writing rank: the model, the optimiser state
  and the averaged weights (EMA), each rank writing only the shards it owns;
* ``rank-<r>.safetensors``: what is rank r's own, its RNG states and its sampler's generator;
* ``state.json``: step, data position, scheduler, metrics, the writing world size (rank 0).

DCP stores every tensor with its global shape and the offsets of each shard, so a checkpoint written by W
ranks loads on any number of ranks, one process included (resharding). Writing follows the protocol of
``training.checkpoint``: every rank writes into ``.tmp-step-<N>/``, rank 0 renames it into place and then
switches ``LATEST``, so a process killed at any moment leaves the old or the new checkpoint, never half.

``export_checkpoint_weights`` turns the model part of a checkpoint into the single safetensors file that
run directories and the registry use, in one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from seekrec.io import atomic_path
from seekrec.training.checkpoint import STATE_FILE, CheckpointError, _json_default, publish_checkpoint
from seekrec.training.distributed import DistContext, barrier

FORMAT = "dcp"
DCP_METADATA = ".metadata"
SHARED = "shared"  # the state-dict key of tensors sharded like the parameters (the EMA weights)


def rank_file(rank: int) -> str:
    return f"rank-{rank}.safetensors"


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a DCP checkpoint (written under ``train.strategy = "fsdp"``)."""
    return (path / DCP_METADATA).is_file()


def save_sharded_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    ctx: DistContext,
    *,
    rank_tensors: dict[str, Tensor],
    shared_tensors: dict[str, Tensor],
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>`` on every rank (collective), point ``LATEST`` at it and prune to ``keep``.

    ``rank_tensors``: this rank's own state (e.g. its sampler's generator), stored with its RNG states.
    ``shared_tensors``: named tensors laid out like the parameters (DTensor shards under FSDP).
    """
    tmp = begin_checkpoint(root, step, ctx)
    model_state, optim_state = get_state_dict(model, optimizer)
    payload: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
    if shared_tensors:
        payload[SHARED] = dict(shared_tensors)
    with _one_process_is_meant(ctx):
        dcp.save(payload, checkpoint_id=tmp, no_dist=not ctx.enabled)  # the writer fsyncs its files
    write_rank_state(tmp, ctx, rank_tensors)
    return commit_checkpoint(root, tmp, {"step": step, "format": FORMAT, "world_size": ctx.world_size, **state},
                             ctx, keep=keep)


def begin_checkpoint(root: Path, step: int, ctx: DistContext) -> Path:
    """The empty directory ``root/.tmp-step-<step>`` every rank writes its part of a checkpoint into (collective)."""
    tmp = root / f".tmp-step-{step:09d}"  # one name all ranks agree on
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while writing
        tmp.mkdir()
    barrier(ctx)
    return tmp


def write_rank_state(tmp: Path, ctx: DistContext, rank_tensors: dict[str, Tensor]) -> None:
    """``rank-<r>.safetensors`` in ``tmp``: this rank's ``rank_tensors`` (``extra.*``) and RNG states, fsynced."""
    own = {f"extra.{k}": v.detach().contiguous().cpu() for k, v in rank_tensors.items()}
    own["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            own[f"rng.cuda.{i}"] = s
    save_file(own, str(tmp / rank_file(ctx.rank)))
    fsync_file(tmp / rank_file(ctx.rank))


def commit_checkpoint(root: Path, tmp: Path, meta: dict[str, Any], ctx: DistContext, *, keep: int = 2) -> Path:
    """Once every rank has written into ``tmp`` (collective): rank 0 adds ``state.json`` (``meta``), renames ``tmp``
    to ``step-<meta["step"]>``, switches ``LATEST`` and prunes to ``keep`` checkpoints. Returns the directory."""
    final = root / f"step-{meta['step']:09d}"
    barrier(ctx)
    if ctx.is_main:
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        fsync_file(tmp / STATE_FILE)
        publish_checkpoint(root, tmp, final, keep)
    barrier(ctx)
    return final


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``; ``CheckpointError`` if it is unreadable."""
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to fall back to an older one") \
            from exc


def read_rank_state(path: Path, ctx: DistContext, state: dict[str, Any], *, restore_rng: bool = True,
                    rank: int | None = None) -> dict[str, Tensor]:
    """This rank's ``rank-<r>.safetensors`` (rank 0's when the world size changed; ``rank``'s when given): restores
    its RNG states (``restore_rng``) and returns its extra tensors."""
    same_world = state.get("world_size") == ctx.world_size
    own_file = path / rank_file(rank if rank is not None else ctx.rank if same_world else 0)
    try:
        own = load_file(str(own_file))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {path}: {own_file.name} is unreadable ({exc}); delete the checkpoint "
                              "to fall back to an older one") from exc
    if restore_rng:
        torch.set_rng_state(own["rng.torch"])
        cuda_states = [own[k] for k in sorted(own) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    return {k.removeprefix("extra."): v for k, v in own.items() if k.startswith("extra.")}


def load_sharded_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ctx: DistContext,
    *,
    shared_tensors: dict[str, Tensor] | None = None,
    restore_rng: bool = True,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Restore a checkpoint written by any number of ranks into this rank's (sharded or whole) model,
    optimiser and ``shared_tensors`` (in place; collective). Returns the JSON state and the extra tensors:
    this rank's own (rank 0's when the world size changed) and the restored shared ones.

    A shared tensor the checkpoint lacks is left out of the result, so its owner can name what is missing.
    """
    try:
        state = json.loads((path / STATE_FILE).read_text())
        stored = set(FileSystemReader(path).read_metadata().state_dict_metadata)
    except (OSError, json.JSONDecodeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to fall back to an older one") \
            from exc
    shared = {k: v for k, v in (shared_tensors or {}).items() if f"{SHARED}.{k}" in stored}
    if optimizer is None:
        payload: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        # on a fresh optimiser this allocates its state (a zero-lr step), so DCP has tensors to fill
        model_state, optim_state = get_state_dict(model, optimizer)
        payload = {"model": model_state, "optimizer": optim_state}
    if shared:
        payload[SHARED] = shared
    try:
        with _one_process_is_meant(ctx):
            dcp.load(payload, checkpoint_id=path, no_dist=not ctx.enabled)
        if optimizer is None:
            set_model_state_dict(model, payload["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=payload["model"], optim_state_dict=payload["optimizer"])
    except (CheckpointException, RuntimeError, ValueError, KeyError) as exc:  # DCP wraps what each rank raised
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {exc}; resume with the config it was written "
                              "with, or delete it to fall back to an older one") from exc
    extras = read_rank_state(path, ctx, state, restore_rng=restore_rng)
    return state, {**extras, **shared}


def export_checkpoint_weights(path: Path, model: nn.Module, out: Path) -> Path:
    """Write the weights of checkpoint ``path`` (any world size) as one safetensors file ``out``, through
    ``model`` (a freshly built, unsharded instance of the run's model); one process, no process group."""
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path} is not a sharded (DCP) checkpoint: it has no {DCP_METADATA}")
    model_state = get_model_state_dict(model)
    try:
        with _one_process_is_meant(DistContext(0, 1, 0, torch.device("cpu"))):
            dcp.load({"model": model_state}, checkpoint_id=path, no_dist=True)
    except (CheckpointException, RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {exc}") from exc
    model.load_state_dict(model_state)
    with atomic_path(out) as tmp:
        save_model(model, str(tmp))
    return out


@contextlib.contextmanager
def _one_process_is_meant(ctx: DistContext) -> Iterator[None]:
    """Silence DCP's warning that it runs without a process group when that is what this run is."""
    with warnings.catch_warnings():
        if not ctx.enabled:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def fsync_file(path: Path) -> None:
    """Flush ``path`` to disk, so a rename after it publishes complete contents."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
