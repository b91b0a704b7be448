from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from seekrec.models.losses import BCELoss, FullSoftmaxLoss, LossConfig, SampledSoftmaxLoss, sampled_softmax_logits
from seekrec.models.negatives import NegativeSampler
from seekrec.models.factory import build_loss

from .helpers import TableModel


def _setup(similarity: str = "dot") -> tuple[TableModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = TableModel(12, 8, similarity)
    hidden = torch.randn(6, 8)  # [M, D]
    targets = torch.tensor([1, 5, 5, 12, 7, 3])  # [M]
    return model, hidden, targets


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
@pytest.mark.parametrize(
    "config",
    [
        LossConfig(name="bce"),
        LossConfig(name="bce", sampler="popularity"),
        LossConfig(name="sampled_softmax", n_negatives=5),
        LossConfig(name="sampled_softmax", n_negatives=5, sampler="popularity"),
        LossConfig(name="sampled_softmax", n_negatives=5, logq_correction=False, remove_accidental_hits=False),
        LossConfig(name="full_softmax"),
    ],
)
def test_every_loss_option_is_finite_and_differentiable(config: LossConfig, similarity: str) -> None:
    model, hidden, targets = _setup(similarity)
    hidden.requires_grad_(True)
    loss = build_loss(config, 12, item_counts=torch.arange(13.0))
    value = loss(model, hidden, targets, torch.Generator().manual_seed(0))
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0


def test_logq_correction_subtracts_log_sampling_probability_from_every_logit() -> None:
    pos, neg = torch.randn(3), torch.randn(3, 4)
    targets, negatives = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7])
    log_q_pos, log_q_neg = torch.log(torch.tensor([0.1, 0.2, 0.3])), torch.log(torch.tensor([0.05, 0.1, 0.2, 0.4]))
    plain = sampled_softmax_logits(pos, neg, targets, negatives)
    corrected = sampled_softmax_logits(pos, neg, targets, negatives, log_q_pos=log_q_pos, log_q_neg=log_q_neg)
    torch.testing.assert_close(corrected[:, 0] - plain[:, 0], -log_q_pos)
    torch.testing.assert_close(corrected[:, 1:] - plain[:, 1:], -log_q_neg.expand(3, 4))


def test_sampled_softmax_loss_uses_sampler_log_q() -> None:
    model, hidden, targets = _setup()
    sampler = NegativeSampler("popularity", 12, item_counts=torch.arange(13.0) ** 2)
    loss = SampledSoftmaxLoss(sampler, 7, remove_accidental_hits=False)
    value = loss(model, hidden, targets, torch.Generator().manual_seed(1))
    negatives = sampler.sample((7,), torch.Generator().manual_seed(1))
    pos = (hidden * model.encode_items(targets)).sum(-1) - sampler.log_q(targets)
    neg = hidden @ model.encode_items(negatives).T - sampler.log_q(negatives)[None]
    expected = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(value, expected)


def test_accidental_hits_are_masked() -> None:
    pos, neg = torch.tensor([1.0, 2.0]), torch.tensor([[0.5, 3.0, -1.0], [0.0, 0.0, 0.0]])
    targets, negatives = torch.tensor([8, 4]), torch.tensor([2, 8, 4])
    logits = sampled_softmax_logits(pos, neg, targets, negatives)
    probs = logits.softmax(-1)
    assert probs[0, 2] == 0 and probs[1, 3] == 0, "negative equal to the positive gets no mass"
    expected_row0 = torch.tensor([1.0, 0.5, -1.0]).softmax(-1)
    torch.testing.assert_close(probs[0, [0, 1, 3]], expected_row0)
    unmasked = sampled_softmax_logits(pos, neg, targets, negatives, remove_accidental_hits=False)
    assert unmasked.softmax(-1)[0, 2] > 0.5


def test_bce_drops_negative_term_on_accidental_hits() -> None:
    model, hidden, _ = _setup()
    only_item = torch.ones(6, dtype=torch.long)  # with one item every negative is a hit
    loss = BCELoss(NegativeSampler("uniform", 1))
    value = loss(model, hidden, only_item, torch.Generator().manual_seed(0))
    pos = (hidden * model.encode_items(only_item)).sum(-1)
    torch.testing.assert_close(value, F.softplus(-pos).mean())


def test_full_softmax_is_cross_entropy_over_items_without_padding() -> None:
    model, hidden, targets = _setup()
    logits = hidden @ model.table.weight[1:].T  # [M, N]
    torch.testing.assert_close(FullSoftmaxLoss()(model, hidden, targets, None), F.cross_entropy(logits, targets - 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"name": "hinge"}, "name"), ({"n_negatives": 0}, "n_negatives"), ({"sampler": "zipf"}, "sampler")],
)
def test_loss_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossConfig(**overrides)
