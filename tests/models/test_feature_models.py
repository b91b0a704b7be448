"""The shared suite every feature-based model (``FeatureBatch`` in, scores out) must pass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.layers.features import with_item_id, with_item_ids
from seekrec.models.factory import build_feature_model, feature_model_names

from .feature_helpers import ITEM, SEQ_LEN, TINY, USER, make_feature_model, random_batch, random_catalog

VARIANTS = [
    ("two_tower", {}),
    ("two_tower", {"sequence_pooling": "mean"}),
    ("din", {}),
    ("din", {"key_columns": [], "use_recency": False, "activation": "relu"}),
]


@pytest.fixture(params=VARIANTS, ids=lambda v: f"{v[0]}-{'-'.join(f'{k}={x}' for k, x in v[1].items()) or 'default'}")
def variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param


def pair_scores(model: nn.Module, user: FeatureBatch, item: FeatureBatch) -> Tensor:
    """``[B]`` score of pair b = (user b, item b), whatever the model's forward returns."""
    out = model(user, item)
    if isinstance(out, Tensor):
        return out
    return (out.users * out.items).sum(-1) / out.temperature


def build(variant: tuple[str, dict[str, Any]], seed: int = 0) -> nn.Module:
    name, overrides = variant
    return make_feature_model(name, seed, **overrides)


def test_registry_lists_the_feature_models() -> None:
    assert feature_model_names() == ("two_tower", "din")
    with pytest.raises(ValueError, match="two_tower, din"):
        build_feature_model("wide_deep", {}, user=USER, item=ITEM)


def test_pair_scores_are_finite_with_shape_b(variant: tuple[str, dict[str, Any]]) -> None:
    model = build(variant).eval()
    user, item = random_batch(USER, 6, seed=1), random_batch(ITEM, 6, seed=2)
    with torch.no_grad():
        scores = pair_scores(model, user, item)
    assert scores.shape == (6,) and torch.isfinite(scores).all()
    empty = replace(user, sequence=torch.zeros_like(user.sequence), recency=torch.zeros_like(user.recency))
    with torch.no_grad():
        assert torch.isfinite(pair_scores(model, empty, item)).all(), "users without history stay finite"


def test_padding_never_changes_outputs(variant: tuple[str, dict[str, Any]]) -> None:
    model = build(variant).eval()
    user, item = random_batch(USER, 5, seed=3, min_history=1), random_batch(ITEM, 5, seed=4)
    with torch.no_grad():
        reference = pair_scores(model, user, item)
        # more left padding of the sequence
        wider = replace(user, sequence=F.pad(user.sequence, (4, 0)), recency=F.pad(user.recency, (4, 0)))
        torch.testing.assert_close(pair_scores(model, wider, item), reference, atol=1e-5, rtol=0)
        # garbage recency at padded positions
        noisy = user.recency.masked_fill(user.sequence == 0, 7.5)
        torch.testing.assert_close(pair_scores(model, replace(user, recency=noisy), item), reference, atol=1e-5, rtol=0)
        # multi-valued columns padded wider
        padded = {k: F.pad(v, (0, 2)) for k, v in item.categorical.items()}
        torch.testing.assert_close(pair_scores(model, user, replace(item, categorical=padded)), reference,
                                   atol=1e-5, rtol=0)
        # each row is independent of the others
        rows = torch.tensor([2, 0])
        torch.testing.assert_close(pair_scores(model, user.index(rows), item.index(rows)), reference[rows],
                                   atol=1e-5, rtol=0)


def test_every_parameter_gets_a_finite_gradient(variant: tuple[str, dict[str, Any]]) -> None:
    model = build(variant).train()
    user, item = random_batch(USER, 16, seed=5, min_history=2), random_batch(ITEM, 16, seed=6)
    scores = pair_scores(model, user, item)
    F.binary_cross_entropy_with_logits(scores, torch.arange(16).remainder(2).float()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_safetensors_round_trip_gives_identical_outputs(variant: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    model = build(variant, seed=0).eval()
    user, item = random_batch(USER, 4, seed=7), random_batch(ITEM, 4, seed=8)
    save_model(model, str(tmp_path / "model.safetensors"))
    loaded = build(variant, seed=1).eval()
    load_model(loaded, str(tmp_path / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(pair_scores(loaded, user, item), pair_scores(model, user, item), atol=0, rtol=0)


def test_config_survives_a_json_manifest(variant: tuple[str, dict[str, Any]]) -> None:
    name, overrides = variant
    model = build(variant)
    manifest = json.loads(json.dumps(dataclasses.asdict(model.config)))
    catalog = random_catalog(seed=123) if name == "din" else None
    rebuilt = build_feature_model(name, manifest, user=USER, item=ITEM, catalog=catalog)
    assert rebuilt.config == model.config
    other = dataclasses.replace(USER, sequence_len=SEQ_LEN + 1)
    with pytest.raises(ValueError, match="differs from the feature spec"):
        build_feature_model(name, manifest, user=other, item=ITEM, catalog=catalog)
    with pytest.raises(ValueError, match="unknown .* config keys \\['hidden'\\]"):
        build_feature_model(name, {**TINY[name], **overrides, "hidden": 3}, user=USER, item=ITEM, catalog=catalog)


def test_item_ids_join_a_spec_schema_and_its_batches() -> None:
    spec_schema = FeatureSchema(categorical=(("genres", 7),), text_dim=4, n_items=9)  # no id: the spec's shape
    schema = with_item_id(spec_schema)
    assert schema.categorical == (("item_id", 10), ("genres", 7)) and schema.text_dim == 4
    batch = with_item_ids(FeatureBatch({"genres": torch.tensor([[1, 2], [3, 0]])}, text=torch.zeros(2, 4)),
                          torch.tensor([4, 0]))
    assert torch.equal(batch.categorical["item_id"], torch.tensor([[4], [0]]))
    with pytest.raises(ValueError, match="already has"):
        with_item_id(schema)
    with pytest.raises(ValueError, match="item_ids must be"):
        with_item_ids(batch, torch.tensor([1, 2, 3]))
