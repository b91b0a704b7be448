from __future__ import annotations

import dataclasses

import pytest
import torch

from seekrec.models import factory
from seekrec.models.deepseek_rec import DeepSeekRec, DeepSeekRecConfig
from seekrec.models.losses import BCELoss, FullSoftmaxLoss, SampledSoftmaxLoss
from seekrec.models.factory import build_loss, build_model, model_config_class, model_names
from seekrec.models.sasrec import SASRec, SASRecConfig

from .helpers import N_ITEMS, TINY


def test_names_map_to_classes() -> None:
    assert model_names() == ("sasrec", "deepseek")
    assert model_config_class("sasrec") is SASRecConfig
    assert model_config_class("deepseek") is DeepSeekRecConfig
    assert isinstance(build_model("sasrec", TINY["sasrec"], N_ITEMS), SASRec)
    model = build_model("deepseek", TINY["deepseek"], N_ITEMS)
    assert isinstance(model, DeepSeekRec) and model.n_items == N_ITEMS


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="sasrec, deepseek"):
        build_model("bert4rec", {}, N_ITEMS)
    with pytest.raises(ValueError, match="valid names"):
        model_config_class("gru4rec")


def test_config_dict_checks() -> None:
    with pytest.raises(ValueError, match="unknown sasrec config keys \\['hidden'\\]"):
        build_model("sasrec", {"hidden": 64}, N_ITEMS)
    with pytest.raises(ValueError, match="n_items=99"):
        build_model("sasrec", {"n_items": 99}, N_ITEMS)
    config = dataclasses.asdict(build_model("sasrec", TINY["sasrec"], N_ITEMS).config)
    assert build_model("sasrec", config, N_ITEMS).config == SASRecConfig(**config), "checkpoint round trip"


def test_item_features_only_for_models_that_use_them(monkeypatch: pytest.MonkeyPatch) -> None:
    features = torch.zeros(N_ITEMS + 1, 2)
    for name in ("sasrec", "deepseek"):
        model = build_model(name, {**TINY[name], "n_side_features": 2}, N_ITEMS, item_features=features)
        assert model.item_features.shape == (N_ITEMS + 1, 2)
    # every registered sequence model takes them; a model that did not would be refused by name
    monkeypatch.setitem(factory._MODELS, "sasrec", dataclasses.replace(factory._MODELS["sasrec"],
                                                                       takes_item_features=False))
    with pytest.raises(ValueError, match="does not use item_features"):
        build_model("sasrec", {"n_side_features": 2}, N_ITEMS, item_features=features)


def test_build_loss() -> None:
    assert isinstance(build_loss({"name": "bce"}, N_ITEMS), BCELoss)
    assert isinstance(build_loss({"name": "full_softmax"}, N_ITEMS), FullSoftmaxLoss)
    counts = torch.ones(N_ITEMS + 1)
    loss = build_loss({"name": "sampled_softmax", "sampler": "popularity"}, N_ITEMS, item_counts=counts)
    assert isinstance(loss, SampledSoftmaxLoss) and loss.sampler.kind == "popularity"
    with pytest.raises(ValueError, match="unknown loss config keys"):
        build_loss({"negatives": 3}, N_ITEMS)
    with pytest.raises(ValueError, match="item_counts"):
        build_loss({"name": "bce", "sampler": "popularity"}, N_ITEMS)
