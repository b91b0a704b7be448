from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from seekrec.models.losses import LOSS_NAMES, LossConfig
from seekrec.models.factory import build_loss
from seekrec.models.task import NextItemBatch, NextItemTask

from .helpers import MODEL_NAMES, N_ITEMS, left_pad, make_model, successor_batch


def test_step_loss_returns_scalar_and_detached_stats() -> None:
    model = make_model("sasrec")
    task = NextItemTask(model, build_loss(LossConfig(name="bce"), N_ITEMS), seed=0)
    batch = successor_batch(4, 6, seed=0)
    result = task.step_loss(batch)
    loss, stats = result  # unpacks as a pair
    assert loss.ndim == 0 and loss.requires_grad
    assert set(stats) == {"loss", "loss_main", "loss_aux", "n_targets"}
    assert all(not value.requires_grad for value in stats.values())
    assert stats["n_targets"].item() == int((batch.target_ids != 0).sum())
    assert stats["loss_aux"].item() == 0.0


def test_deepseek_auxiliary_loss_and_stats_are_included() -> None:
    model = make_model("deepseek", balance_loss_alpha=0.1)
    task = NextItemTask(model, build_loss(LossConfig(name="full_softmax"), N_ITEMS))
    loss, stats = task.step_loss(successor_batch(4, 6, seed=0))
    assert stats["loss_aux"].item() > 0
    torch.testing.assert_close(loss.detach(), stats["loss_main"] + stats["loss_aux"])
    assert stats["moe_max_load_ratio"].item() >= 1.0


def test_generator_state_makes_a_resumed_run_draw_the_same_negatives() -> None:
    model = make_model("sasrec").eval()
    loss = build_loss(LossConfig(name="sampled_softmax", n_negatives=8), N_ITEMS)
    batch = successor_batch(4, 6, seed=0)
    task = NextItemTask(model, loss, seed=5)
    task.step_loss(batch)
    state = task.state_dict()
    expected = task.step_loss(batch).loss
    resumed = NextItemTask(model, loss, seed=0)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.step_loss(batch).loss, expected)
    assert resumed.seed == 5


def test_wrapped_model_uses_wrapper_forward_and_inner_api() -> None:
    class Wrapper(nn.Module):  # the DDP shape: forward delegates, model under .module
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, input_ids: Tensor) -> Tensor:
            self.calls += 1
            return self.module(input_ids)

    wrapper = Wrapper(make_model("sasrec"))
    NextItemTask(wrapper, build_loss(LossConfig(), N_ITEMS)).step_loss(successor_batch(2, 5, seed=0))
    assert wrapper.calls == 1


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("rows", [[[0, 0, 0, 0]], [[1, 2]]], ids=["padding-row", "history-without-targets"])
def test_batch_without_targets_has_zero_loss_and_zero_gradients(name: str, loss_name: str,
                                                                 rows: list[list[int]]) -> None:
    """A rank's empty share of a short batch (an all-padding row) still runs forward and loss, adding nothing."""
    model = make_model(name, dropout=0.0, **({"balance_loss_alpha": 0.1} if name == "deepseek" else {}))
    task = NextItemTask(model, build_loss(LossConfig(name=loss_name, n_negatives=8), N_ITEMS))
    ids = left_pad(rows, 4)
    loss, stats = task.step_loss(NextItemBatch(ids, torch.zeros_like(ids)))
    assert stats["n_targets"].item() == 0 and stats["loss_main"].item() == 0.0
    assert torch.isfinite(loss)
    (loss * stats["n_targets"]).backward()  # as TrainStep weighs it
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and not g.any() for g in grads)


def test_batch_to_device() -> None:
    batch = successor_batch(2, 5, seed=0).to("cpu")
    assert isinstance(batch, NextItemBatch) and batch.input_ids.device.type == "cpu"
