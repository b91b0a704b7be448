"""Optimisation settings shared by offline and online training."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16", "fp16")
STRATEGIES = ("ddp", "fsdp", "deepspeed")


@dataclass
class TrainConfig:
    """How to optimise: AdamW, warmup + cosine decay, clipping, precision, accumulation, stopping.

    ``batch_size`` is the global batch (split across ranks under torchrun, any world size); one optimiser
    step consumes ``batch_size`` sequences as ``grad_accum`` micro-batches of ``batch_size / grad_accum``.

    ``strategy`` (under torchrun): "ddp" replicates the model on every rank; "fsdp" shards parameters,
    gradients and optimiser state across ranks (``training.parallel``, docs/distributed.md). In a
    single process both train the bare model; "fsdp" still writes sharded (DCP) checkpoints, so a run
    can move between one process and several. "deepspeed" trains through DeepSpeed's engine (ZeRO stage 0-2,
    its fp16/bf16, its schedulers) configured by the JSON file ``deepspeed_config``
    (``training.deepspeed_strategy``; ``pip install 'seekrec[deepspeed]'``).

    ``dist_timeout_s`` (under torchrun): how long a collective waits for the other ranks before it fails,
    so that torchrun restarts the workers after a peer hangs (SIGSTOP, network partition) instead of
    waiting torch's default (30 min for gloo, 10 min for NCCL). Rank 0 validates and writes checkpoints
    while the others wait in their next collective, so it must exceed one validation plus one checkpoint
    write (docs/elastic.md). None keeps torch's default.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    max_epochs: int = 200
    batch_size: int = 128
    grad_accum: int = 1
    clip_norm: float | None = 1.0
    precision: str = "fp32"
    compile: bool = False
    strategy: str = "ddp"
    deepspeed_config: str | None = None  # ds_config.json, read with strategy "deepspeed" (seekrec train --deepspeed)
    activation_checkpointing: bool = False
    eval_every: int = 1  # epochs between validation runs
    patience: int = 10  # validation runs without improvement before stopping
    select_metric: str = "ndcg@10"
    checkpoint_every: int = 0  # optimiser steps between resumable checkpoints (0: each validation)
    eval_batch_size: int = 512
    ema_decay: float = 0.0  # validate, keep and test an exponential moving average of the weights (0: off)
    seed: int = 0
    device: str = "auto"
    dist_timeout_s: float | None = None

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # TOML gives lists
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("train.lr must be > 0 and train.weight_decay >= 0")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_epochs < 1:
            raise ValueError("train.batch_size, train.grad_accum and train.max_epochs must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy must be one of {STRATEGIES} (replicated or sharded data parallel, or "
                             f"DeepSpeed's engine), got {self.strategy!r}")
        if (self.strategy == "deepspeed") != (self.deepspeed_config is not None):
            raise ValueError("train.strategy = 'deepspeed' goes with train.deepspeed_config, the path of a DeepSpeed "
                             "JSON config, and only with it: pass seekrec train --deepspeed ds_config.json")
        if self.strategy == "deepspeed" and self.compile:
            raise ValueError("train.compile is not supported with train.strategy='deepspeed'; set train.compile = "
                             "false")
        if self.strategy == "fsdp" and self.compile:
            raise ValueError("train.compile is not supported with train.strategy='fsdp' (it would have to compile "
                             "each block before sharding); set train.compile = false or use strategy 'ddp'")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError("train.clip_norm must be > 0 (or omitted to disable clipping)")
        if self.eval_every < 1 or self.patience < 1 or self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("train.eval_every and train.patience must be >= 1; warmup/checkpoint_every >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("train.min_lr_ratio must lie in [0, 1]")
        if self.dist_timeout_s is not None and not self.dist_timeout_s > 0:
            raise ValueError(f"train.dist_timeout_s must be > 0 seconds (longer than one validation plus one "
                             f"checkpoint write), or omitted for torch's default; got {self.dist_timeout_s}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must lie in [0, 1) (e.g. 0.999; 0 turns averaging off), got {self.ema_decay}")
