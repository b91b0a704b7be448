"""Cold start: an item added at inference time with a title (and genre) only is retrieved for users whose
history shares its content, through the item tower's text input, and not for others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.features.store import FeatureStore
from seekrec.pipeline.artifacts import load_bundle, save_bundle
from seekrec.pipeline.evaluate import EvalUsers
from seekrec.pipeline.features import new_item_features
from seekrec.pipeline.run import TrainedPipeline
from tests.features.helpers import assert_batches_equal
from tests.pipeline.helpers import fans_of

SPACE_TITLE = {"title": "Rocket Nebula Comet", "genres": ["Space"]}


@pytest.fixture(scope="module")
def users(trained: TrainedPipeline, world: tuple[InteractionData, Split]) -> EvalUsers:
    data, split = world
    return EvalUsers.build(trained.pipeline, data, split, "test")


def share_with_new_item(candidates: torch.Tensor, users: EvalUsers, topic: str, new_id: int) -> float:
    rows = torch.from_numpy(np.isin(users.held.users, fans_of(topic)))
    return float((candidates[rows] == new_id).any(dim=1).float().mean())


def test_a_new_item_is_retrieved_for_users_who_like_its_content(trained: TrainedPipeline, users: EvalUsers,
                                                                tmp_path: Path) -> None:
    base = trained.pipeline
    pipeline = base.with_stages(dataclasses.replace(base.stages, n_candidates=8, k=5))  # a copy: add_items stays local
    now = float(users.held.as_of.max())
    features = new_item_features(pipeline.spec, [SPACE_TITLE], now)
    assert features.text is not None and features.text.abs().sum() > 0, "the title is embedded by the fitted TF-IDF"
    (new_id,) = pipeline.add_items(["new-space-film"], features)
    assert new_id == base.spec.n_items + 1 and pipeline.n_items == base.n_items + 1 and base.n_items == 48
    assert pipeline.raw_item_ids([new_id, 1]) == ["new-space-film", "1"]
    assert pipeline.item_ids(["new-space-film", "1", "nope"]).tolist() == [new_id, 1, 0]
    candidates = pipeline.recommend(users.user, users.held.seen()).candidates  # top R = 8 of 49
    assert share_with_new_item(candidates, users, "space", new_id) >= 0.8
    for topic in ("kitchen", "ocean"):
        assert share_with_new_item(candidates, users, topic, new_id) <= 0.1, topic
    # the new item is there because of its title: an untitled item lands nowhere near space fans
    blank = pipeline.add_items(["untitled"], new_item_features(pipeline.spec, [{}], now))[0]
    candidates = pipeline.recommend(users.user, users.held.seen()).candidates
    assert share_with_new_item(candidates, users, "space", blank) < share_with_new_item(candidates, users, "space",
                                                                                        new_id)
    reloaded = load_bundle(save_bundle(pipeline, tmp_path / "grown"))
    assert reloaded.new_raw_ids == ("new-space-film", "untitled")
    assert torch.equal(reloaded.recommend(users.user, users.held.seen()).candidates, candidates)


def test_store_rows_and_offline_rows_of_a_new_item_agree(trained: TrainedPipeline, world: tuple[InteractionData, Split],
                                                         users: EvalUsers) -> None:
    spec = trained.pipeline.spec
    now = float(users.held.as_of.max())
    store = FeatureStore.embedded(spec)
    store.put_attributes("item", {"new-space-film": SPACE_TITLE})
    assert_batches_equal(store.item_features(["new-space-film"], now), new_item_features(spec, [SPACE_TITLE], now))


def test_adding_a_known_or_repeated_item_is_refused(trained: TrainedPipeline, users: EvalUsers) -> None:
    pipeline = trained.pipeline.with_stages(trained.pipeline.stages)
    features = new_item_features(pipeline.spec, [SPACE_TITLE, SPACE_TITLE], 0.0)
    with pytest.raises(ValueError, match="already in the catalog or repeated"):
        pipeline.add_items(["1", "fresh"], features)
    with pytest.raises(ValueError, match="already in the catalog or repeated"):
        pipeline.add_items(["twin", "twin"], features)
    with pytest.raises(ValueError, match="rows"):
        pipeline.add_items(["fresh"], features)
    assert pipeline.n_items == trained.pipeline.n_items, "a refused add changes nothing"
