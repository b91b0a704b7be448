"""The shared suite every sequence model must pass (parametrized over the registry names)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seekrec.models.base import SequenceRecommender
from seekrec.models.layers.context import SequenceContext
from seekrec.models.losses import LossConfig
from seekrec.models.factory import build_loss
from seekrec.models.task import NextItemTask

from .helpers import (
    ALL_FLAGS,
    FLAGS,
    MAX_LEN,
    MODEL_NAMES,
    N_ITEMS,
    left_pad,
    make_model,
    successor_batch,
    with_context,
)


@pytest.fixture(params=MODEL_NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_implements_protocol_and_shapes(name: str) -> None:
    model = make_model(name).eval()
    assert isinstance(model, SequenceRecommender)
    ids = left_pad([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]], 8)  # [B=3, L=8]
    dim = model.encode_items(torch.tensor(1)).shape[-1]
    assert model(ids).shape == (3, 8, dim)
    assert model.encode_users(ids).shape == (3, dim)
    assert model.encode_items(torch.tensor([[1, 2], [3, 4]])).shape == (2, 2, dim)
    assert model.score_all(ids).shape == (3, N_ITEMS + 1)


def test_left_padding_invariance(name: str) -> None:
    model = make_model(name).eval()
    seq = [7, 3, 9, 12, 1]
    with torch.no_grad():
        reference = model.encode_users(left_pad([seq], len(seq)))
        for length in (6, 11, MAX_LEN):
            torch.testing.assert_close(model.encode_users(left_pad([seq], length)), reference, atol=1e-5, rtol=0)
        # and independent of the other rows of the batch
        mixed = model.encode_users(left_pad([[2, 2, 2, 2, 2, 2, 2, 2], seq, [], [30]], 10))
        torch.testing.assert_close(mixed[1:2], reference, atol=1e-5, rtol=0)


def test_train_mode_differs_from_eval_mode_only_by_dropout(name: str) -> None:
    """No routing noise, expert capacity or token dropping: with every dropout at 0 a training forward
    (which also records DeepSeek's expert counts) equals the evaluation forward, which repeats exactly."""
    model = make_model(name, dropout=0.0)
    ids = left_pad([[5, 6, 7], list(range(1, 13)), [9], list(range(3, 3 + MAX_LEN))], MAX_LEN)  # [B=4, L]
    trained = model.train()(ids).detach()
    with torch.no_grad():
        evaluated, again = model.eval()(ids), model(ids)
    torch.testing.assert_close(trained, evaluated, atol=1e-6, rtol=0)
    assert torch.equal(evaluated, again)


def test_causality(name: str) -> None:
    model = make_model(name).eval()
    ids = left_pad([[4, 8, 15, 16, 23, 29]], 8)
    changed = ids.clone()
    changed[0, 5] = 2  # change the 4th real item (index 5 of 8)
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-6, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_fully_padded_rows_are_finite_and_padding_outputs_zero(name: str) -> None:
    model = make_model(name).eval()
    ids = left_pad([[], [3, 4]], 5)
    with torch.no_grad():
        hidden = model(ids)
    assert torch.isfinite(hidden).all()
    assert (hidden[ids == 0] == 0).all()


def test_score_all_is_users_times_items(name: str) -> None:
    ids = left_pad([[1, 2, 3], [9, 8]], 6)
    all_ids = torch.arange(N_ITEMS + 1)
    dot = make_model(name).eval()
    with torch.no_grad():
        torch.testing.assert_close(dot.score_all(ids), dot.encode_users(ids) @ dot.encode_items(all_ids).T)
    cosine = make_model(name, similarity="cosine", temperature=0.05).eval()
    with torch.no_grad():
        users = F.normalize(cosine.encode_users(ids), dim=-1)
        items = F.normalize(cosine.encode_items(all_ids), dim=-1)
        torch.testing.assert_close(cosine.score_all(ids), users @ items.T / 0.05)


def test_too_long_input_is_rejected(name: str) -> None:
    model = make_model(name)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    model = make_model(name).train()
    task = NextItemTask(model, build_loss(LossConfig(name="full_softmax"), N_ITEMS), seed=0)
    task.step_loss(successor_batch(8, 10, seed=1)).loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


@pytest.mark.parametrize("loss_name", ["bce", "sampled_softmax", "full_softmax"])
def test_training_reduces_each_loss(name: str, loss_name: str) -> None:
    model = make_model(name, dropout=0.0)
    loss = build_loss(LossConfig(name=loss_name, n_negatives=16), N_ITEMS)
    held_out = successor_batch(32, 10, seed=99)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            value = NextItemTask(model, loss, seed=7).step_loss(held_out).loss.item()
        model.train()
        return value

    task = NextItemTask(model, loss, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    initial = evaluate()
    assert torch.isfinite(torch.tensor(initial))
    for step in range(40):
        optimizer.zero_grad()
        task.step_loss(successor_batch(32, 10, seed=step)).loss.backward()
        optimizer.step()
    final = evaluate()
    assert final < 0.7 * initial, f"{name}/{loss_name}: {initial:.3f} -> {final:.3f}"


def test_activation_checkpointing_gives_the_same_gradients(name: str) -> None:
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = make_model(name).train()
        model.set_activation_checkpointing(enabled)
        task = NextItemTask(model, build_loss(LossConfig(name="full_softmax"), N_ITEMS), seed=0)
        torch.manual_seed(1)  # same dropout masks: checkpoint replays the RNG state
        task.step_loss(successor_batch(8, 10, seed=1)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_grow_items_keeps_existing_scores_and_adds_trainable_rows(name: str) -> None:
    model = make_model(name).eval()
    ids = left_pad([[1, 2, 3], [4, 5]], 6)
    before = model.score_all(ids)
    model.grow_items(N_ITEMS + 3)
    after = model.score_all(ids)
    assert after.shape == (2, N_ITEMS + 4) and model.n_items == N_ITEMS + 3
    torch.testing.assert_close(after[:, : N_ITEMS + 1], before)
    assert torch.isfinite(after).all()
    new_ids = left_pad([[1, N_ITEMS + 2, N_ITEMS + 3]], 6)
    model.train()
    model(new_ids).sum().backward()
    assert model.encode_items(torch.tensor(N_ITEMS + 3)).requires_grad
    with pytest.raises(ValueError, match="shrink"):
        model.grow_items(1)


# -- event-time and action inputs (models.layers.context) ---------------------------------------------
def test_defaults_have_exactly_the_parameters_of_before(name: str) -> None:
    """All flags off adds no module and draws no extra init: the same state dict, so old checkpoints load."""
    default = make_model(name).state_dict()
    explicit = make_model(name, **dict.fromkeys(FLAGS, False), n_time_buckets=32, n_action_buckets=11).state_dict()
    assert default.keys() == explicit.keys()
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    assert not any("context_embedding" in k or "attention_bias" in k for k in default)
    flagged = make_model(name, **ALL_FLAGS).state_dict()
    assert set(flagged) - set(default) and set(default) < set(flagged)
    assert all(torch.equal(default[k], flagged[k]) for k in default)  # new modules draw after the old ones


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_changes_the_output_and_stays_causal(name: str, flag: str) -> None:
    model, plain = make_model(name, **{flag: True}).eval(), make_model(name).eval()
    ids, context = with_context([[4, 8, 15, 16, 23, 29]], 8)
    later = SequenceContext(context.times.clone(), context.query_times.clone(), context.values.clone())
    later.times[0, 5:] += 10**6  # the 4th real event (index 5 of 8) and after: other times, other values
    later.query_times[0, 5:] += 10**6
    later.values[0, 5:] = 5.0 - later.values[0, 5:]
    with torch.no_grad():
        out, changed = model(ids, context), model(ids, later)
        assert not torch.allclose(out, plain(ids), atol=1e-4)
    torch.testing.assert_close(out[:, :5], changed[:, :5], atol=1e-6, rtol=0)
    if flag != "relative_position_bias":
        assert not torch.allclose(out[:, 5:], changed[:, 5:], atol=1e-6)


def test_left_padding_invariance_with_context(name: str) -> None:
    model = make_model(name, **ALL_FLAGS).eval()
    seq = [7, 3, 9, 12, 1]
    with torch.no_grad():
        reference = model.encode_users(*with_context([seq], len(seq)))
        for length in (6, 11, MAX_LEN):
            torch.testing.assert_close(model.encode_users(*with_context([seq], length)), reference, atol=1e-5, rtol=0)
        ids, context = with_context([[2, 2, 2, 2, 2, 2, 2, 2], seq, [], [30]], 10, seed=0)
        _, own = with_context([seq], 10, seed=0)
        for field in ("times", "query_times", "values"):  # row 1 carries seq's own times and values
            getattr(context, field)[1] = getattr(own, field)[0]
        torch.testing.assert_close(model.encode_users(ids, context)[1:2], reference, atol=1e-5, rtol=0)


def test_context_models_encode_users_as_the_last_position_and_score_with_context(name: str) -> None:
    model = make_model(name, **ALL_FLAGS).eval()
    ids, context = with_context([[1, 2, 3], [], [5, 6, 7, 8, 9, 10]], 8)
    with torch.no_grad():
        hidden, users = model(ids, context), model.encode_users(ids, context)
        torch.testing.assert_close(users, hidden[:, -1], atol=1e-5, rtol=0)
        all_ids = torch.arange(N_ITEMS + 1)
        torch.testing.assert_close(model.score_all(ids, context), users @ model.encode_items(all_ids).T)
    assert torch.isfinite(hidden).all() and (hidden[ids == 0] == 0).all()


def test_missing_context_is_named(name: str) -> None:
    model = make_model(name, time_features=True, action_features=True)
    with pytest.raises(ValueError, match="time_features, action_features"):
        model(left_pad([[1, 2]], 4))
    ids, context = with_context([[1, 2]], 4)
    with pytest.raises(ValueError, match="input_ids has"):
        model(ids, context.last(3))
    make_model(name, relative_position_bias=True)(ids)  # positions alone need no context


def test_context_models_train_every_parameter_with_and_without_checkpointing(name: str) -> None:
    batch = successor_batch(8, 10, seed=1)
    _, batch.context = with_context([row[row != 0].tolist() for row in batch.input_ids], 10, seed=2)
    grads = []
    for enabled in (False, True):
        torch.manual_seed(0)
        model = make_model(name, **ALL_FLAGS).train()
        model.set_activation_checkpointing(enabled)
        task = NextItemTask(model, build_loss(LossConfig(name="full_softmax"), N_ITEMS), seed=0)
        torch.manual_seed(1)
        task.step_loss(batch).loss.backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
            assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
