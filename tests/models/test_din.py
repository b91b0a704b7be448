from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seekrec.evaluation.ctr import auc, ece, logloss
from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.calibration import Calibrator
from seekrec.models.ctr_task import ClickGroups, ClickGroupTask
from seekrec.models.din import DIN, ActivationUnit, DINConfig
from seekrec.models.factory import build_feature_model
from seekrec.training.step import count_targets

from .feature_helpers import ITEM, N_ITEMS, USER, make_feature_model, random_batch, random_catalog

# --- model ---------------------------------------------------------------------------------------------


def test_activation_unit_equals_the_plain_concatenation() -> None:
    torch.manual_seed(0)
    unit = ActivationUnit(key_dim=6, hidden_dims=(8, 4), activation="prelu", use_recency=True)
    hist, cand, recency = torch.randn(3, 5, 6), torch.randn(3, 4, 6), torch.rand(3, 5)
    with torch.no_grad():
        torch.testing.assert_close(unit(hist, cand, recency), unit.reference(hist, cand, recency))
    assert unit(hist, cand, recency).shape == (3, 4, 5)


def test_score_candidates_matches_pairwise_forward() -> None:
    model = make_feature_model("din").eval()
    n_users, n_cands = 3, 5
    user = random_batch(USER, n_users, seed=0)
    items = random_batch(ITEM, n_users * n_cands, seed=1)
    repeated = user.index(torch.arange(n_users).repeat_interleave(n_cands))
    with torch.no_grad():
        grouped = model.score_candidates(user, items)  # [B, C]
        torch.testing.assert_close(grouped, model(repeated, items).view(n_users, n_cands))
        shared = items.index(torch.arange(n_cands))
        tiled = shared.index(torch.arange(n_cands).repeat(n_users))
        broadcast = model.score_candidates(user, shared, shared=True)
        torch.testing.assert_close(broadcast, model.score_candidates(user, tiled))
    with pytest.raises(ValueError, match="multiple"):
        model.score_candidates(user, random_batch(ITEM, 7, seed=2))


def test_history_keys_use_the_catalog() -> None:
    model = make_feature_model("din").eval()
    user, item = random_batch(USER, 4, seed=3, min_history=3), random_batch(ITEM, 4, seed=4)
    catalog = random_catalog(seed=123)
    with torch.no_grad():
        before = model(user, item)
        catalog.categorical["genres"] = catalog.categorical["genres"].roll(1, dims=0)
        model.set_catalog(catalog)
        assert not torch.allclose(model(user, item), before), "history items are described by catalog genres"
    with pytest.raises(ValueError, match="catalog"):
        DIN(model.config)
    with pytest.raises(ValueError, match="does not keep an item catalog"):
        build_feature_model("two_tower", {}, user=USER, item=ITEM, catalog=catalog)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"item_id_column": "genres"}, "cardinality n_items \\+ 1"),
        ({"key_columns": ("item_id",)}, "key_columns"),
        ({"key_columns": ("mood",)}, "key_columns"),
        ({"attention_hidden": ()}, "attention_hidden"),
        ({"activation": "dice"}, "activation"),
    ],
)
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DINConfig(USER, ITEM, **overrides)
    with pytest.raises(ValueError, match="sequence_len"):
        DINConfig(FeatureSchema(categorical=(("age", 4),)), ITEM)


# --- CTR task ------------------------------------------------------------------------------------------


def test_click_groups_give_weighted_bce_over_scored_pairs() -> None:
    model = make_feature_model("din")
    user, item = random_batch(USER, 2, seed=5), random_batch(ITEM, 6, seed=6)
    label = torch.tensor([[1.0, 0, 0], [1, 0, 0]])
    weight = torch.tensor([[1.0, 1, 0], [1, 1, 1]])  # one accidental hit in the first group
    batch = ClickGroups(user, item, label, weight)
    loss, stats = ClickGroupTask(model).step_loss(batch)
    logits = model.score_candidates(user, item)
    keep = weight.bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], label[keep])
    torch.testing.assert_close(loss, expected)
    assert stats["n_targets"].item() == 5 == count_targets(batch)


# --- synthetic learning: click iff the candidate's genre is in the history ------------------------------

N_GENRES, HISTORY = 8, 6
PLANTED_USER = FeatureSchema(sequence_len=HISTORY, n_items=N_ITEMS)
PLANTED_ITEM = FeatureSchema(categorical=(("item_id", N_ITEMS + 1), ("genre", N_GENRES + 1)))


def genre_of(ids: torch.Tensor) -> torch.Tensor:
    return torch.where(ids > 0, (ids - 1) % N_GENRES + 1, 0)


def planted_items(ids: torch.Tensor) -> FeatureBatch:
    return FeatureBatch({"item_id": ids[:, None], "genre": genre_of(ids)[:, None]})


def planted_batch(size: int, g: torch.Generator) -> ClickGroups:
    """Groups of one candidate each (logged impressions: clicked or not)."""
    lengths = torch.randint(2, 5, (size, 1), generator=g)
    history = torch.randint(1, N_ITEMS + 1, (size, HISTORY), generator=g)
    history = history.masked_fill(torch.arange(HISTORY)[None] < HISTORY - lengths, 0)  # left padding
    recency = torch.rand(size, HISTORY, generator=g).masked_fill(history == 0, 0.0)
    candidates = torch.randint(1, N_ITEMS + 1, (size,), generator=g)
    label = (genre_of(history) == genre_of(candidates)[:, None]).any(dim=1).float()
    return ClickGroups(FeatureBatch(sequence=history, recency=recency), planted_items(candidates), label[:, None],
                       torch.ones(size, 1))


def test_learns_click_iff_candidate_genre_in_history() -> None:
    torch.manual_seed(0)
    config = DINConfig(PLANTED_USER, PLANTED_ITEM, embed_dim=8, attention_hidden=(16,), hidden_dims=(32, 16),
                       key_columns=("genre",))
    model = DIN(config, catalog=planted_items(torch.arange(N_ITEMS + 1)))
    task = ClickGroupTask(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        optimizer.zero_grad()
        task.step_loss(planted_batch(128, g)).loss.backward()
        optimizer.step()
    held_out = planted_batch(1000, torch.Generator().manual_seed(99))
    model.eval()
    with torch.no_grad():
        logits = model(held_out.user, held_out.item)
    score = auc(held_out.label[:, 0].numpy(), logits.numpy())
    assert score > 0.9, f"AUC {score:.3f}"


# --- calibration ---------------------------------------------------------------------------------------


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from ``sigmoid(z)`` and over-confident, shifted logits ``3 z + 1``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return 3 * z + 1, labels


def test_platt_scaling_fixes_a_miscalibrated_model() -> None:
    logits, labels = miscalibrated(4000, seed=0)
    calibrator = Calibrator.fit(logits, labels)
    assert calibrator.scale == pytest.approx(1 / 3, abs=0.05) and calibrator.bias == pytest.approx(-1 / 3, abs=0.1)
    test_logits, test_labels = miscalibrated(4000, seed=1)
    raw = 1 / (1 + np.exp(-test_logits))
    fixed = calibrator(torch.from_numpy(test_logits)).numpy()
    assert logloss(test_labels, fixed) < logloss(test_labels, raw) - 0.05
    assert ece(test_labels, fixed) < 0.03 < ece(test_labels, raw)
    assert auc(test_labels, fixed) == pytest.approx(auc(test_labels, raw)), "a positive scale keeps the ranking"


def test_temperature_scaling_and_json_round_trip() -> None:
    logits, labels = miscalibrated(2000, seed=2)
    temperature = Calibrator.fit(torch.from_numpy(logits), torch.from_numpy(labels), method="temperature")
    assert temperature.bias == 0.0 and 0 < temperature.scale < 1
    restored = Calibrator.from_dict(json.loads(json.dumps(temperature.to_dict())))
    assert restored == temperature
    with pytest.raises(ValueError, match="unknown calibrator keys"):
        Calibrator.from_dict({"scale": 1.0, "slope": 2.0})
    with pytest.raises(ValueError, match="method"):
        Calibrator.fit(logits, labels, method="isotonic")
    with pytest.raises(ValueError, match="0 or 1"):
        Calibrator.fit(logits, labels * 2)
