"""seekrec's ``TrainConfig`` and a DeepSpeed config (``ds_config.json``) translated into each other, without
importing DeepSpeed, so that a config is checked (and its mistakes named) before anything trains.

Precedence (docs/distributed.md, "DeepSpeed"): the JSON is the user's source of truth for every value it sets;
its ``"auto"`` values, and what it leaves out, come from seekrec's config. A ``train.*`` field set in the TOML or
on the command line that disagrees with a value the JSON sets is an error naming both.

* JSON -> seekrec, when the config loads (``train_from_ds_config``): each value the JSON sets becomes the
  matching ``train.*`` field, so the run's ``config.json`` records what actually trains.
* seekrec -> JSON, when the engine is built (``engine_config``): the dict given to ``deepspeed.initialize``,
  every ``"auto"`` and every left-out value filled from ``train.*``, the world size and the run's length.
  ``ds_config_from_train`` writes a whole JSON from a ``TrainConfig`` (a starting point for a user's file).

What maps to what:

==========================================================  =======================================
ds_config                                                   train
==========================================================  =======================================
``train_batch_size``                                        ``batch_size`` (the global batch)
``gradient_accumulation_steps``                             ``grad_accum``
``train_micro_batch_size_per_gpu``                          ``batch_size / (grad_accum * world size)``
``gradient_clipping`` (0: off)                              ``clip_norm`` (None: off)
``optimizer`` AdamW / Adam ``params.lr, betas, weight_decay``  ``lr``, ``betas``, ``weight_decay``
``scheduler`` WarmupLR ``warmup_max_lr, warmup_num_steps``  ``lr``, ``warmup_steps``; ``min_lr_ratio = 1``
``scheduler`` WarmupCosineLR ``warmup_num_steps, cos_min_ratio``  ``warmup_steps``, ``min_lr_ratio``
``fp16.enabled`` / ``bf16.enabled``                         ``precision`` "fp16" / "bf16" (both off: "fp32")
``zero_optimization.stage`` (0, 1 or 2)                     (DeepSpeed's own; ``train.strategy="fsdp"`` shards)
==========================================================  =======================================

seekrec always builds the optimiser itself (``training.step.build_optimizer``: torch AdamW, no weight decay on
biases, norms and embeddings, as under DDP and FSDP), so the JSON's optimizer section only supplies its values.
A scheduler in the JSON is built by DeepSpeed exactly as written (log warmup included); without one seekrec's
warmup + cosine schedule runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from seekrec.training.config import TrainConfig

AUTO = "auto"
ADAM_EPS = 1e-8  # torch AdamW's default, which build_optimizer keeps
OPTIMIZERS = ("AdamW", "Adam")
SCHEDULERS = ("WarmupLR", "WarmupCosineLR")
OPTIMIZER_PARAMS = ("lr", "betas", "eps", "weight_decay", "torch_adam", "adam_w_mode")
DEEPSPEED_TAG = "deepspeed"  # the tag (subdirectory) of DeepSpeed's files in a seekrec checkpoint


@dataclasses.dataclass(frozen=True)
class DsValue:
    """One value the JSON sets, as the ``train`` field it becomes: ``path`` names it in the JSON for messages."""

    field: str
    value: Any
    path: str
    raw: Any


def read_ds_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file, invalid JSON or a non-object is one ``ValueError`` naming it."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{file}: no such DeepSpeed config file; check the --deepspeed path")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: unreadable DeepSpeed config ({exc})") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: a DeepSpeed config is a JSON object ({{...}}), got {type(raw).__name__}")
    return raw


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether checkpoint directory ``path`` was written under ``train.strategy = "deepspeed"``."""
    return (path / DEEPSPEED_TAG).is_dir()


def _is_set(value: Any) -> bool:
    return value is not None and value != AUTO


def _section(ds: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    section = ds.get(key) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{source}: {key} must be a JSON object, got {section!r}")
    return section


def _positive_int(value: Any, path: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: {path} must be an integer >= 1 or \"auto\", got {value!r}")
    return value


def _number(value: Any, path: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: {path} must be a number or \"auto\", got {value!r}")
    return float(value)


def ds_values(ds: dict[str, Any], *, world_size: int, grad_accum: int, source: str = "ds_config") -> list[DsValue]:
    """The ``train`` values ``ds`` sets (not its "auto" ones, not what it leaves out), checked; refuses what seekrec
    cannot honour (another optimiser or scheduler, ZeRO-3, offload, both fp16 and bf16), naming the key.
    ``grad_accum``: seekrec's, for a JSON that sets the micro-batch but not the accumulation steps."""
    return list(_ds_values(ds, world_size, grad_accum, source))


def _ds_values(ds: dict[str, Any], world_size: int, grad_accum: int, source: str) -> Iterator[DsValue]:
    gas = ds.get("gradient_accumulation_steps")
    if _is_set(gas):
        gas = _positive_int(gas, "gradient_accumulation_steps", source)
        yield DsValue("grad_accum", gas, "gradient_accumulation_steps", gas)
    batch, micro = ds.get("train_batch_size"), ds.get("train_micro_batch_size_per_gpu")
    if _is_set(batch):
        batch = _positive_int(batch, "train_batch_size", source)
        yield DsValue("batch_size", batch, "train_batch_size", batch)
    if _is_set(micro):
        micro = _positive_int(micro, "train_micro_batch_size_per_gpu", source)
        implied = micro * (gas if _is_set(gas) else grad_accum) * world_size
        if _is_set(batch) and batch != implied:
            raise ValueError(f"{source}: train_batch_size {batch} != train_micro_batch_size_per_gpu {micro} x "
                             f"gradient_accumulation_steps {gas if _is_set(gas) else grad_accum} x world size "
                             f"{world_size}; set one of them to \"auto\"")
        if not _is_set(batch):
            yield DsValue("batch_size", implied, f"train_micro_batch_size_per_gpu x {world_size} ranks", micro)
    clip = ds.get("gradient_clipping")
    if _is_set(clip):
        clip = _number(clip, "gradient_clipping", source)
        if clip < 0:
            raise ValueError(f"{source}: gradient_clipping must be >= 0 (0: off), got {clip}")
        yield DsValue("clip_norm", clip or None, "gradient_clipping", clip)
    yield from _optimizer_values(_section(ds, "optimizer", source), source)
    yield from _scheduler_values(_section(ds, "scheduler", source), source)
    yield from _precision_values(ds, source)
    _check_zero(_section(ds, "zero_optimization", source), source)
    if "amp" in ds and _section(ds, "amp", source).get("enabled"):
        raise ValueError(f"{source}: amp (NVIDIA apex) is not supported; use \"fp16\" or \"bf16\" instead")


def _optimizer_values(optimizer: dict[str, Any], source: str) -> Iterator[DsValue]:
    if not optimizer:
        return
    kind = optimizer.get("type")
    if kind not in OPTIMIZERS:
        raise ValueError(f"{source}: optimizer.type {kind!r}: seekrec trains with AdamW; use \"AdamW\" (or drop the "
                         "optimizer section: train.lr, betas and weight_decay apply)")
    params = optimizer.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{source}: optimizer.params must be a JSON object, got {params!r}")
    unknown = sorted(set(params) - set(OPTIMIZER_PARAMS))
    if unknown:
        raise ValueError(f"{source}: optimizer.params.{unknown[0]} is not supported: seekrec builds its own AdamW "
                         f"from {', '.join(OPTIMIZER_PARAMS[:4])}; drop it")
    if params.get("adam_w_mode") is False:
        raise ValueError(f"{source}: optimizer.params.adam_w_mode false is Adam with L2 regularisation; seekrec "
                         "trains with AdamW (decoupled weight decay): drop adam_w_mode")
    eps = params.get("eps")
    if _is_set(eps) and _number(eps, "optimizer.params.eps", source) != ADAM_EPS:
        raise ValueError(f"{source}: optimizer.params.eps {eps}: seekrec's AdamW uses eps {ADAM_EPS}; set it to "
                         f"{ADAM_EPS} or \"auto\"")
    if _is_set(params.get("lr")):
        lr = params["lr"]
        yield DsValue("lr", _number(lr, "optimizer.params.lr", source), "optimizer.params.lr", lr)
    if _is_set(params.get("betas")):
        betas = params["betas"]
        if not (isinstance(betas, list) and len(betas) == 2):
            raise ValueError(f"{source}: optimizer.params.betas must be [beta1, beta2], got {betas!r}")
        pair = tuple(_number(b, "optimizer.params.betas", source) for b in betas)
        yield DsValue("betas", pair, "optimizer.params.betas", betas)
    if _is_set(params.get("weight_decay")):
        wd = params["weight_decay"]
        yield DsValue("weight_decay", _number(wd, "optimizer.params.weight_decay", source),
                      "optimizer.params.weight_decay", wd)


def _scheduler_values(scheduler: dict[str, Any], source: str) -> Iterator[DsValue]:
    if not scheduler:
        return
    kind = scheduler.get("type")
    if kind not in SCHEDULERS:
        raise ValueError(f"{source}: scheduler.type {kind!r} is not supported; use one of {', '.join(SCHEDULERS)}, "
                         "or drop the scheduler section for seekrec's warmup + cosine (train.warmup_steps, "
                         "train.min_lr_ratio)")
    params = scheduler.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"{source}: scheduler.params must be a JSON object, got {params!r}")
    steps = params.get("warmup_num_steps")
    if _is_set(steps):
        yield DsValue("warmup_steps", _positive_int(steps, "scheduler.params.warmup_num_steps", source),
                      "scheduler.params.warmup_num_steps", steps)
    if kind == "WarmupLR":
        peak = params.get("warmup_max_lr")
        if _is_set(peak):
            yield DsValue("lr", _number(peak, "scheduler.params.warmup_max_lr", source),
                          "scheduler.params.warmup_max_lr", peak)
        yield DsValue("min_lr_ratio", 1.0, "scheduler.type", kind)  # constant after warmup
    else:
        floor = params.get("cos_min_ratio")
        if _is_set(floor):
            yield DsValue("min_lr_ratio", _number(floor, "scheduler.params.cos_min_ratio", source),
                          "scheduler.params.cos_min_ratio", floor)


def _precision_values(ds: dict[str, Any], source: str) -> Iterator[DsValue]:
    enabled = {}
    for name in ("fp16", "bf16"):
        if name in ds:
            flag = _section(ds, name, source).get("enabled", False)
            if flag not in (True, False, AUTO):
                raise ValueError(f"{source}: {name}.enabled must be true, false or \"auto\", got {flag!r}")
            enabled[name] = flag
    on = [name for name, flag in enabled.items() if flag is True]
    if len(on) > 1:
        raise ValueError(f"{source}: fp16.enabled and bf16.enabled are both true; enable one")
    if on:
        yield DsValue("precision", on[0], f"{on[0]}.enabled", True)
    elif enabled and all(flag is False for flag in enabled.values()):
        yield DsValue("precision", "fp32", " and ".join(f"{n}.enabled" for n in enabled), False)


def _check_zero(zero: dict[str, Any], source: str) -> None:
    stage = zero.get("stage", 0)
    if stage == 3:
        raise ValueError(f"{source}: zero_optimization.stage 3 is not supported by seekrec's DeepSpeed path; use "
                         "stage 1 or 2, or train.strategy = \"fsdp\" to shard the parameters too")
    if stage not in (0, 1, 2):
        raise ValueError(f"{source}: zero_optimization.stage must be 0, 1 or 2, got {stage!r}")
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key)
        device = offload.get("device", "none") if isinstance(offload, dict) else offload
        if device not in (None, "none"):
            raise ValueError(f"{source}: zero_optimization.{key} is not supported: seekrec passes its own torch "
                             "AdamW, which DeepSpeed does not run on offloaded states; drop it")


def train_from_ds_config(train: TrainConfig, ds: dict[str, Any], *, explicit: Mapping[str, str] | None = None,
                         world_size: int = 1, source: str = "ds_config") -> TrainConfig:
    """``train`` with every value ``ds`` sets. ``explicit``: the ``train`` fields the user set, each with where (a
    TOML file, "command line"); one of them that disagrees with the JSON is a ``ValueError`` naming both. A field
    left at its default takes the JSON's value. ``world_size`` turns a JSON micro-batch into seekrec's global batch."""
    explicit = explicit or {}
    values = ds_values(ds, world_size=world_size, grad_accum=train.grad_accum, source=source)
    updates: dict[str, Any] = {}
    for v in values:
        previous = updates.get(v.field)
        if previous is not None and previous.value != v.value:  # e.g. optimizer lr vs WarmupLR's warmup_max_lr
            raise ValueError(f"{source}: {previous.path} {previous.raw!r} and {v.path} {v.raw!r} disagree; set one of "
                             "them to \"auto\"")
        if v.field in explicit and getattr(train, v.field) != v.value:
            raise ValueError(f"train.{v.field} = {getattr(train, v.field)!r} ({explicit[v.field]}) conflicts with "
                             f"{source} {v.path} = {v.raw!r}; remove one of them (or set it to \"auto\" in the JSON)")
        updates[v.field] = v
    return dataclasses.replace(train, **{field: v.value for field, v in updates.items()})


def engine_config(train: TrainConfig, ds: dict[str, Any], *, world_size: int, total_steps: int,
                  source: str = "ds_config") -> dict[str, Any]:
    """The config for ``deepspeed.initialize``: ``ds`` with its "auto" and missing values filled from ``train`` (which
    must already agree with what ``ds`` sets: ``train_from_ds_config``), the micro-batch from the world size,
    ``total_steps`` for a cosine schedule; without the optimizer section (seekrec passes its AdamW)."""
    for v in ds_values(ds, world_size=world_size, grad_accum=train.grad_accum, source=source):
        if getattr(train, v.field) != v.value:
            raise ValueError(f"train.{v.field} = {getattr(train, v.field)!r} disagrees with {source} {v.path} = "
                             f"{v.raw!r}: load the config with ExperimentConfig.load (seekrec train --deepspeed), "
                             "which takes the JSON's values")
    per_rank, rest = divmod(train.batch_size, train.grad_accum * world_size)
    if rest or not per_rank:
        raise ValueError(f"DeepSpeed needs train_batch_size = micro-batch x gradient_accumulation_steps x world size: "
                         f"train.batch_size {train.batch_size} is not a multiple of train.grad_accum "
                         f"{train.grad_accum} x {world_size} ranks; use a multiple of {train.grad_accum * world_size}")
    out = copy.deepcopy(ds)
    out.pop("optimizer", None)
    out.update(train_batch_size=train.batch_size, gradient_accumulation_steps=train.grad_accum,
               train_micro_batch_size_per_gpu=per_rank, gradient_clipping=train.clip_norm or 0.0)
    for name in ("fp16", "bf16"):
        out[name] = {**_section(ds, name, source), "enabled": train.precision == name}
    if ds.get("scheduler"):
        out["scheduler"] = _filled_scheduler(_section(ds, "scheduler", source), train, total_steps, source)
    left = sorted(_auto_paths(out))
    if left:
        raise ValueError(f"{source}: {left[0]} is \"auto\" but seekrec has no value for it; set it in the JSON")
    return out


def _filled_scheduler(scheduler: dict[str, Any], train: TrainConfig, total_steps: int, source: str) -> dict[str, Any]:
    params = dict(scheduler.get("params") or {})
    fill = {"warmup_num_steps": train.warmup_steps}
    if scheduler["type"] == "WarmupLR":
        fill["warmup_max_lr"] = train.lr
    else:
        fill.update(total_num_steps=total_steps, cos_min_ratio=train.min_lr_ratio)
    for key, value in fill.items():
        if not _is_set(params.get(key)):
            params[key] = value
    if params["warmup_num_steps"] < 1:
        raise ValueError(f"{source}: DeepSpeed's {scheduler['type']} needs warmup_num_steps >= 1, and "
                         f"train.warmup_steps is {train.warmup_steps}; set one of them")
    return {**scheduler, "params": params}


def _auto_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _auto_paths(value, f"{prefix}.{key}" if prefix else key)
    elif node == AUTO:
        yield prefix


def ds_config_from_train(train: TrainConfig, *, world_size: int, zero_stage: int = 2) -> dict[str, Any]:
    """A whole ds_config.json for ``train`` on ``world_size`` ranks: batch sizes, clipping, precision, AdamW, and
    WarmupCosineLR with linear warmup for seekrec's warmup + cosine (``total_num_steps`` "auto": the run's length).
    ``train_from_ds_config`` of it gives ``train``'s values back."""
    per_rank = train.batch_size // (train.grad_accum * world_size)
    config: dict[str, Any] = {
        "train_batch_size": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_micro_batch_size_per_gpu": per_rank if per_rank * train.grad_accum * world_size == train.batch_size
        else AUTO,
        "gradient_clipping": train.clip_norm or 0.0,
        "fp16": {"enabled": train.precision == "fp16"},
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_optimization": {"stage": zero_stage},
        "optimizer": {"type": "AdamW", "params": {"lr": train.lr, "betas": list(train.betas), "eps": ADAM_EPS,
                                                  "weight_decay": train.weight_decay}},
    }
    if train.warmup_steps >= 1:  # DeepSpeed's schedulers need a warmup; without one seekrec's schedule runs
        config["scheduler"] = {"type": "WarmupCosineLR", "params": {
            "warmup_num_steps": train.warmup_steps, "warmup_type": "linear", "warmup_min_ratio": 0.0,
            "cos_min_ratio": train.min_lr_ratio, "total_num_steps": AUTO}}
    return config
