"""Training jobs of the multi-process tests (FSDP, uneven shards), run both in the test process (one rank) and under
torchrun (several gloo ranks).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/training/fsdp_jobs.py SPEC.json`` runs the
jobs that SPEC lists, in order, in one process group: starting the ranks costs more than all the training, so
one launch serves every test. The repository root must be on PYTHONPATH (``tests.models`` helpers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from seekrec.data.sequences import SeqBatch, SequenceDataset
from seekrec.data.splits import load_split
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.models.ctr_task import ClickGroups, ClickGroupTask
from seekrec.models.factory import build_loss, build_model, build_retrieval_loss
from seekrec.models.losses import LossConfig
from seekrec.models.retrieval_task import RetrievalBatch, RetrievalTask
from seekrec.models.task import NextItemTask
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, init_distributed, shutdown
from seekrec.training.parallel import shard_model
from seekrec.training.run_dir import RunDir
from seekrec.training.step import StepStats, TrainStep, build_optimizer
from seekrec.training.trainer import SequenceEpochs, Trainer
from tests.models import feature_helpers, helpers

MAX_LEN = 12
MODELS: dict[str, dict[str, Any]] = {
    "sasrec": {"dim": 16, "n_layers": 2, "n_heads": 2, "max_len": MAX_LEN, "dropout": 0.0},
    "deepseek": {**helpers.TINY["deepseek"], "max_len": MAX_LEN, "dropout": 0.0, "bias_update_speed": 0.01},
}
# a clip below the early gradient norms, so steps clip; constant lr after warmup, so a run cut short by
# ``stop_after`` follows the schedule of a full one; averaged weights (EMA), validated and checkpointed in shards
TRAIN: dict[str, Any] = {"lr": 1e-2, "batch_size": 32, "max_epochs": 3, "warmup_steps": 2, "min_lr_ratio": 1.0,
                         "clip_norm": 0.25, "ema_decay": 0.9, "eval_batch_size": 64, "device": "cpu",
                         "strategy": "fsdp"}
CPU = DistContext(0, 1, 0, torch.device("cpu"))


class Interrupted(Exception):
    """Raised on every rank at the same batch: a run stopped as if killed after its last checkpoint."""


class StopAfter:
    """``EpochBatches`` that raise ``Interrupted`` instead of serving global batch ``steps + 1`` (of this run)."""

    def __init__(self, inner: SequenceEpochs, steps: int) -> None:
        self.inner, self.steps, self.served = inner, steps, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.inner.steps_per_epoch

    def epoch(self, epoch: int, start: int) -> Iterator[list[Any]]:
        for group in self.inner.epoch(epoch, start):
            if self.served == self.steps:
                raise Interrupted
            self.served += 1
            yield group

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        return self.inner.throughput(stats, world_size)


def sequence_run(data_dir: str, out: str, ctx: DistContext, *, model: str = "sasrec", stop_after: int | None = None,
                 resume: bool = False, **train: Any) -> None:
    """Train a tiny next-item model on ``data_dir`` with the ``Trainer`` (validation and test on ranking metrics)
    into run directory ``out``; ``stop_after`` global batches interrupts it (its checkpoints stay)."""
    data, split = load_split(data_dir, "leave_one_out")
    torch.manual_seed(0)  # the same initial weights on every rank and in every run
    net = build_model(model, MODELS[model], data.n_items)
    loss = build_loss(LossConfig(name="full_softmax"), data.n_items)
    config = TrainConfig(**{**TRAIN, **train})
    batches: Any = SequenceEpochs(SequenceDataset(split.train, MAX_LEN), config, ctx)
    if stop_after is not None:
        batches = StopAfter(batches, stop_after)

    def ranking(which: str) -> Callable[[], dict[str, float]]:
        scorer, eval_set = ModelScorer(net, MAX_LEN), split.eval_set(which)
        return lambda: evaluate(scorer, eval_set, data.n_items, batch_size=64, device=ctx.device).metrics

    trainer = Trainer(net, lambda m: NextItemTask(m, loss, seed=0), batches, ranking("valid"), config,
                      run_dir=RunDir(Path(out)), ctx=ctx, resume=resume, test=ranking("test"))
    try:
        trainer.fit()
    except Interrupted:
        pass


# -- one model family at a time: FSDP steps against the same steps in one process ---------------------------


def _family(name: str) -> tuple[torch.nn.Module, Callable[[torch.nn.Module], Any], Callable[[int], Any]]:
    """A tiny model of ``name``, its task factory and its micro-batches by seed (dropouts off: no randomness)."""
    torch.manual_seed(0)
    if name in MODELS:
        model = build_model(name, {**helpers.TINY[name], "dropout": 0.0}, helpers.N_ITEMS)
        model.set_activation_checkpointing(True)
        loss = build_loss(LossConfig(name="full_softmax"), helpers.N_ITEMS)

        def sequences(seed: int) -> SeqBatch:
            batch = helpers.successor_batch(4, helpers.MAX_LEN, seed)
            return SeqBatch(batch.input_ids, batch.target_ids, torch.arange(4))

        return model, lambda m: NextItemTask(m, loss), sequences
    n_items, user_schema, item_schema = feature_helpers.N_ITEMS, feature_helpers.USER, feature_helpers.ITEM
    if name == "two_tower":
        model = feature_helpers.make_feature_model(name, id_dropout=0.0)
        loss = build_retrieval_loss({}, n_items, item_counts=torch.arange(n_items + 1.0))

        def retrieval(seed: int) -> RetrievalBatch:
            item = feature_helpers.random_batch(item_schema, 4, seed=seed + 1)
            return RetrievalBatch(feature_helpers.random_batch(user_schema, 4, seed=seed), item,
                                  item.categorical["item_id"][:, 0])

        return model, lambda m: RetrievalTask(m, loss), retrieval
    model = feature_helpers.make_feature_model(name)

    def groups(seed: int) -> ClickGroups:  # 4 users, 3 candidates each, the first one clicked
        label = torch.zeros(4, 3)
        label[:, 0] = 1.0
        return ClickGroups(feature_helpers.random_batch(user_schema, 4, seed=seed, min_history=1),
                           feature_helpers.random_batch(item_schema, 12, seed=seed + 1), label, torch.ones(4, 3))

    return model, ClickGroupTask, groups


def family_check(name: str, ctx: DistContext, steps: int = 2) -> dict[str, float]:
    """``steps`` optimiser steps of an FSDP-sharded ``name`` (each rank: 2 accumulated micro-batches, activation
    checkpointing for the sequence models, clipping) against one process taking all 2 * W micro-batches of each
    global batch. Returns the largest parameter and loss differences."""
    config = TrainConfig(lr=1e-2, warmup_steps=1, clip_norm=0.05, grad_accum=2, device="cpu", strategy="fsdp")
    runs = {}
    for side, side_ctx in (("reference", CPU), ("sharded", ctx)):
        model, task, batch = _family(name)
        if side == "sharded":
            shard_model(model, side_ctx)
        optimizer = build_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        step = TrainStep(model, task(model), optimizer, scheduler, config, side_ctx)
        losses = []
        for s in range(steps):
            micro = [batch(100 * s + k) for k in range(2 * ctx.world_size)]  # the global batch, by seed
            mine = micro if side == "reference" else micro[2 * ctx.rank : 2 * ctx.rank + 2]
            losses.append(step(mine).loss)
        params = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in model.named_parameters()}
        runs[side] = (losses, params)
    (ref_losses, ref_params), (losses, params) = runs["reference"], runs["sharded"]
    return {"param_diff": max(float((params[n] - p).abs().max()) for n, p in ref_params.items()),
            "loss_rel_diff": max(abs(a - b) / abs(a) for a, b in zip(ref_losses, losses, strict=True)),
            "n_params": len(params)}


def main(spec_file: str) -> None:
    from seekrec.training.experiment import ExperimentConfig, train_experiment

    ctx = init_distributed("cpu")
    for job in json.loads(Path(spec_file).read_text()):
        kind = job.pop("kind")
        if kind == "sequence":
            sequence_run(ctx=ctx, **job)
        elif kind == "families":
            found = {name: family_check(name, ctx) for name in job["names"]}
            if ctx.is_main:
                Path(job["out"]).write_text(json.dumps(found))
        elif kind == "experiment":  # last: train_experiment closes the process group when it returns
            train_experiment(ExperimentConfig.load(None, job["overrides"]), job["data"], job["out"])
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
