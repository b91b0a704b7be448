"""The weight average: torch's EMA update on the trainable parameters, swapped in for validation, the best
checkpoint and test, restored for training, and resumed exactly from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seekrec.data.sequences import SequenceDataset
from seekrec.data.splits import UserSequences
from seekrec.models.factory import build_loss, build_model
from seekrec.models.losses import LossConfig
from seekrec.models.task import NextItemTask
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext
from seekrec.training.ema import WeightEMA
from seekrec.training.run_dir import RunDir
from seekrec.training.trainer import SequenceEpochs, Trainer
from tests.models.helpers import TINY as TINY_MODELS


def test_update_is_the_exponential_average_and_frozen_weights_are_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)
    ema = WeightEMA(model, decay=0.75)
    assert ema.names == ["0.weight", "0.bias"]
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    ema.update()
    torch.testing.assert_close(ema.shadow[0], 0.75 * start + 0.25 * (start + 4.0))
    live = model[0].weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(model[0].weight.detach(), ema.shadow[0])
    assert torch.equal(model[0].weight.detach(), live)  # training weights restored exactly


def test_state_round_trip_and_errors():
    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.mul_(3.0)
    ema.update()
    other = WeightEMA(torch.nn.Linear(3, 2), decay=0.9)
    other.load_state_tensors(ema.state_tensors())
    for a, b in zip(other.shadow, ema.shadow, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="written with train.ema_decay = 0"):
        other.load_state_tensors({})
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        WeightEMA(model, decay=1.0)
    with pytest.raises(ValueError, match=r"train.ema_decay must lie in \[0, 1\)"):
        TrainConfig(ema_decay=-0.1)


def _setup(tmp_path, config, probe_log):
    n_items, n_users, max_len = 30, 24, TINY_MODELS["sasrec"]["max_len"]
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, n_users + 1), 12)
    seqs = UserSequences.from_interactions(users, rng.integers(1, n_items + 1, len(users)), np.arange(len(users)),
                                           n_users)
    torch.manual_seed(0)
    model = build_model("sasrec", TINY_MODELS["sasrec"], n_items)
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    batches = SequenceEpochs(SequenceDataset(seqs, max_len), config, ctx)
    loss = build_loss(LossConfig(name="full_softmax"), n_items)
    holder = {}

    def score() -> dict[str, float]:
        trainer = holder["trainer"]
        weights = [p.detach().clone() for p in trainer.raw_model.parameters()]
        shadow = [s.clone() for s in trainer.ema.shadow] if trainer.ema is not None else None
        probe_log.append((weights, shadow))
        return {"ndcg@10": 1.0 / len(probe_log)}  # the first validation is the best

    trainer = Trainer(model, lambda m: NextItemTask(m, loss), batches, score, config, run_dir=RunDir(tmp_path),
                      ctx=ctx, resume=True)
    holder["trainer"] = trainer
    return trainer


def test_validation_and_the_kept_model_see_the_average_training_goes_on_from_its_own_weights(tmp_path):
    config = TrainConfig(lr=1e-2, max_epochs=3, batch_size=8, warmup_steps=1, patience=10, device="cpu",
                         ema_decay=0.9)
    seen: list = []
    trainer = _setup(tmp_path, config, seen)
    trainer.fit()
    for weights, shadow in seen:  # inside every validation the model holds the average
        for w, s in zip(weights, shadow, strict=True):
            assert torch.equal(w, s)
    first_avg, last_avg = seen[0][1], seen[-1][1]
    assert any(not torch.equal(a, b) for a, b in zip(first_avg, last_avg, strict=True))
    # after fit the model holds the best (first) validation's averaged weights, not the last training weights
    for p, s in zip(trainer.raw_model.parameters(), first_avg, strict=True):
        assert torch.equal(p.detach(), s)


class _Interrupt(Exception):
    pass


def test_a_resumed_run_averages_exactly_like_an_uninterrupted_one(tmp_path):
    config = TrainConfig(lr=1e-2, max_epochs=3, batch_size=8, warmup_steps=1, patience=10, device="cpu",
                         ema_decay=0.8)
    clean: list = []
    _setup(tmp_path / "clean", config, clean).fit()
    resumed: list = []
    broken = _setup(tmp_path / "resumed", config, resumed)
    original = broken.batches.epoch

    def epoch(index, start):
        for k, group in enumerate(original(index, start)):
            if index == 1 and k == 2:
                raise _Interrupt  # killed in epoch 2, after the epoch-1 checkpoint
            yield group

    broken.batches.epoch = epoch
    with pytest.raises(_Interrupt):
        broken.fit()
    _setup(tmp_path / "resumed", config, resumed).fit()
    assert len(resumed) == len(clean) == 3  # epoch 1 before the interruption, epochs 2 and 3 after it
    for (clean_weights, clean_avg), (weights, avg) in zip(clean, resumed, strict=True):
        for x, y in zip([*clean_weights, *clean_avg], [*weights, *avg], strict=True):
            assert torch.equal(x, y)
