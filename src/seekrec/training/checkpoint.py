"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``step-<N>/`` holding ``model.safetensors``, ``optimizer.safetensors``
(optimiser and RNG states, plus extra tensors such as a sampler's generator) and ``state.json`` (step, data position, scheduler, metrics).
It is built under a temporary name and renamed into place, then ``LATEST`` is switched atomically,
so a process killed at any moment leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from seekrec.io import atomic_write_bytes
from seekrec.models.weights import WeightsError, load_weights

LATEST = "LATEST"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or corrupted; the message says which file."""


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>`` atomically, point ``LATEST`` at it and prune to ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / MODEL_FILE))
    tensors, meta = _flatten_optimizer(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, value in (extra_tensors or {}).items():
        tensors[f"extra.{name}"] = value.detach().contiguous().cpu()
    save_file(tensors, str(tmp / OPTIM_FILE))
    payload = {"step": step, "optimizer_meta": meta, **state}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, default=_json_default))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    return publish_checkpoint(root, tmp, final, keep)


def publish_checkpoint(root: Path, tmp: Path, final: Path, keep: int) -> Path:
    """Rename the complete ``tmp`` to ``final``, point ``LATEST`` at it and prune to the ``keep`` newest: the
    one commit step every checkpoint format shares, so a crash leaves either the old or the new LATEST."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST, final.name.encode())
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The directory ``LATEST`` points at, or ``None`` when no checkpoint was completed."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} points at {path.name}, which does not exist; delete {pointer} to start over")
    return path


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore what was saved into the given objects; returns the JSON state and extra tensors."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        tensors = load_file(str(path / OPTIM_FILE))
    except (OSError, json.JSONDecodeError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); delete it to fall back to an older one") from exc
    try:
        load_weights(model, path / MODEL_FILE)
    except WeightsError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {exc}; delete it to fall back to an older one, "
                              "or resume with the config it was written with") from exc
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer_meta"]))
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return state, extras


def _flatten_optimizer(optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if optimizer is None:
        return {}, {}
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON state")
