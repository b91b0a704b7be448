"""Item side features (``models.layers.side_features``), the same suite for every sequence model, plus the
values both models had before the side-feature code was shared (checkpoints and seeded runs must not move)."""

from __future__ import annotations

import pytest
import torch

from seekrec.models.factory import build_model, model_takes_item_features

from .helpers import MODEL_NAMES, N_ITEMS, TINY, left_pad, make_model

G = 3
HISTORY = left_pad([[1, 2, 3], [4, 2]], 4)  # [B=2, L=4]


def _features() -> torch.Tensor:
    """``[N + 1, G]``: item 1 has feature 0, item 2 features 0 and 2, item 3 feature 1, item 4 the same as
    item 2; the rest none."""
    features = torch.zeros(N_ITEMS + 1, G)
    features[1, 0] = features[2, 0] = features[2, 2] = features[3, 1] = features[4, 0] = features[4, 2] = 1.0
    return features


def _side_model(name: str, seed: int = 0, features: torch.Tensor | None = None, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = {**TINY[name], "n_side_features": G, **overrides}
    return build_model(name, config, N_ITEMS, item_features=_features() if features is None else features)


@pytest.fixture(params=MODEL_NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_sequence_model_takes_item_features(name: str) -> None:
    assert model_takes_item_features(name)


def test_encode_items_is_id_embedding_plus_projected_mean_features(name: str) -> None:
    model = _side_model(name).eval()
    assert set(k for k in model.state_dict() if "side" in k or k == "item_features") == {
        "item_features", "side_projection.weight"}, "the keys DeepSeekRec checkpoints have always had"
    assert model.item_features[0].sum() == 0 and model.item_features.dtype == torch.float32
    ids = torch.tensor([1, 2, 3, 5])
    projection = model.side_projection.weight.detach().clone()  # [D, G]
    side = torch.stack([projection[:, 0], (projection[:, 0] + projection[:, 2]) / 2, projection[:, 1],
                        torch.zeros_like(projection[:, 0])])
    with torch.no_grad():
        model.side_projection.weight.zero_()
        plain = model.encode_items(ids)  # the id embedding alone
        model.side_projection.weight.copy_(projection)
        torch.testing.assert_close(model.encode_items(ids), plain + side)


def test_items_sharing_features_move_together(name: str) -> None:
    model = _side_model(name).eval()
    ids = torch.tensor([2, 4, 1, 5])  # 2 and 4 share their features, 1 has part of them, 5 none
    with torch.no_grad():
        before = model.encode_items(ids)
        model.side_projection.weight.add_(torch.randn_like(model.side_projection.weight))
        moved = model.encode_items(ids) - before
    torch.testing.assert_close(moved[0], moved[1])
    assert not torch.allclose(moved[0], moved[2])
    assert torch.equal(moved[3], torch.zeros_like(moved[3]))


def test_features_enter_the_input_and_the_output(name: str) -> None:
    model = _side_model(name, dropout=0.0).eval()
    other = _features()
    other[3] = torch.tensor([1.0, 0.0, 1.0])  # item 3 takes item 2's features
    changed = _side_model(name, features=other, dropout=0.0).eval()
    assert torch.equal(model.side_projection.weight, changed.side_projection.weight), "same seed, same weights"
    all_ids = torch.arange(N_ITEMS + 1)
    with torch.no_grad():
        users = model.encode_users(HISTORY)  # [B, D]; item 3 is in both histories
        assert not torch.allclose(changed.encode_users(HISTORY), users), "the input side uses the features"
        before = model.similarity.matrix(users, model.encode_items(all_ids))  # [B, N + 1]
        after = changed.similarity.matrix(users, changed.encode_items(all_ids))
    # for the same users, only item 3's column moves: the output side uses the features too
    keep = [i for i in range(N_ITEMS + 1) if i != 3]
    torch.testing.assert_close(after[:, keep], before[:, keep])
    assert not torch.allclose(after[:, 3], before[:, 3])


def test_padding_stays_zero_and_gradients_reach_the_projection(name: str) -> None:
    model = _side_model(name, dropout=0.0).train()
    hidden = model(HISTORY)
    assert torch.equal(hidden[1, :2], torch.zeros_like(hidden[1, :2]))
    hidden.sum().backward()
    assert model.side_projection.weight.grad is not None and model.side_projection.weight.grad.abs().sum() > 0


def test_grow_items_pads_features_with_zeros(name: str) -> None:
    model = _side_model(name).eval()
    with torch.no_grad():
        before = model.score_all(HISTORY)
    model.grow_items(N_ITEMS + 4)
    assert model.item_features.shape == (N_ITEMS + 5, G)
    assert torch.equal(model.item_features[: N_ITEMS + 1], _features().index_fill(0, torch.tensor([0]), 0.0))
    assert torch.equal(model.item_features[N_ITEMS + 1 :], torch.zeros(4, G))
    with torch.no_grad():
        torch.testing.assert_close(model.score_all(HISTORY)[:, : N_ITEMS + 1], before)


def test_checkpoint_restores_the_feature_buffer(name: str) -> None:
    model = _side_model(name).eval()
    restored = build_model(name, {**TINY[name], "n_side_features": G}, N_ITEMS)  # zeros, filled by the load
    assert torch.equal(restored.item_features, torch.zeros(N_ITEMS + 1, G))
    restored.load_state_dict(model.state_dict())
    restored.eval()
    assert torch.equal(restored.item_features, model.item_features)
    with torch.no_grad():
        torch.testing.assert_close(restored.score_all(HISTORY), model.score_all(HISTORY))


def test_bad_features_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="shape"):
        _side_model(name, features=torch.zeros(N_ITEMS, G))
    with pytest.raises(ValueError, match="n_side_features is 0"):
        build_model(name, TINY[name], N_ITEMS, item_features=_features())
    with pytest.raises(ValueError, match="n_side_features must be >= 0"):
        build_model(name, {**TINY[name], "n_side_features": -1}, N_ITEMS)


def test_sasrec_without_side_features_is_unchanged() -> None:
    """Values at seed 0 computed before side features existed in SASRec: same keys, same draws, same outputs."""
    model = make_model("sasrec").eval()
    assert model.side_projection is None
    assert len(model.state_dict()) == 28 and not any("side" in k or "feature" in k for k in model.state_dict())
    assert torch.equal(make_model("sasrec", n_side_features=0).state_dict()["embedding.item_table.weight"],
                       model.state_dict()["embedding.item_table.weight"])
    with torch.no_grad():
        users, items = model.encode_users(HISTORY)[:, :4], model.encode_items(torch.tensor([1, 2, 3]))[:, :4]
    torch.testing.assert_close(users, torch.tensor([[-1.811976, 0.503964, 0.387161, -0.302011],
                                                    [-0.616848, -0.697856, -0.358399, -0.817639]]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(items, torch.tensor([[-0.151027, -0.131816, -0.012590, 0.164754],
                                                    [-0.105737, -0.123039, 0.161264, -0.047087],
                                                    [-0.259974, 0.250274, -0.030755, 0.003846]]),
                               atol=1e-5, rtol=0)


def test_sasrec_side_features_leave_the_id_model_weights_unchanged() -> None:
    plain, side = make_model("sasrec").state_dict(), _side_model("sasrec").state_dict()
    assert set(side) - set(plain) == {"item_features", "side_projection.weight"}
    assert all(torch.equal(plain[k], side[k]) for k in plain)


def test_deepseek_side_features_are_unchanged() -> None:
    """Values at seed 0 computed before the side-feature code was shared: existing checkpoints still load
    and seeded runs draw the same weights."""
    features = _features()
    features[4] = 0.0  # as the features these values were computed with
    model = _side_model("deepseek", features=features).eval()
    with torch.no_grad():
        items = model.encode_items(torch.tensor([1, 2, 3]))[:, :4]
    torch.testing.assert_close(items, torch.tensor([[-0.017834, 0.035012, -0.027425, -0.014713],
                                                    [-0.006101, 0.040781, -0.040653, 0.033561],
                                                    [-0.026014, 0.032535, -0.041395, -0.030184]]),
                               atol=1e-5, rtol=0)
