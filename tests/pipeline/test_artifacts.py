from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.pipeline.artifacts import BundleError, load_bundle, save_bundle
from seekrec.pipeline.config import FeaturesConfig, StageConfig
from seekrec.pipeline.evaluate import EvalUsers
from seekrec.pipeline.run import TrainedPipeline


@pytest.fixture(scope="module")
def users(trained: TrainedPipeline, world: tuple[InteractionData, Split]) -> EvalUsers:
    data, split = world
    return EvalUsers.build(trained.pipeline, data, split, "test")


def copy_bundle(trained: TrainedPipeline, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(trained.record["bundle"], target)
    return target


@pytest.mark.parametrize("retriever", ["two_tower", "sasrec"])
def test_saved_and_loaded_bundles_recommend_identically(trained: TrainedPipeline, users: EvalUsers, tmp_path: Path,
                                                        retriever: str) -> None:
    stages = StageConfig(retriever=retriever, n_candidates=12, k=5)
    original = trained.pipeline.with_stages(stages)
    loaded = load_bundle(trained.record["bundle"], stages=stages)
    expected = original.recommend(users.user, users.held.seen())
    got = loaded.recommend(users.user, users.held.seen())
    assert torch.equal(got.ids, expected.ids) and torch.equal(got.candidates, expected.candidates)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=0)
    resaved = load_bundle(save_bundle(loaded, tmp_path / "again"), stages=stages)
    assert torch.equal(resaved.recommend(users.user, users.held.seen()).ids, expected.ids)


def test_bundle_keeps_its_stage_config_and_layout(trained: TrainedPipeline) -> None:
    root = Path(trained.record["bundle"])
    assert {p.name for p in root.iterdir()} == {
        "pipeline.json", "spec", "two_tower.safetensors", "two_tower.json", "din.safetensors", "din.json",
        "calibrator.json", "catalog.safetensors", "sequence.safetensors", "sequence.json"}
    meta = json.loads((root / "pipeline.json").read_text())
    assert meta["spec_version"] == trained.pipeline.spec.version
    assert load_bundle(root).stages == trained.pipeline.stages
    assert not list(root.parent.glob(".bundle.*")), "no temporary directory left behind"


def test_a_bundle_with_another_spec_is_refused(trained: TrainedPipeline, world: tuple[InteractionData, Split],
                                               tmp_path: Path) -> None:
    data, split = world
    bundle = copy_bundle(trained, tmp_path)
    other = FeaturesConfig(sequence_len=8, text_dim=4).spec_config(data).fit(data, split.train)
    assert other.version != trained.pipeline.spec.version
    shutil.rmtree(bundle / "spec")
    other.save(bundle / "spec")
    with pytest.raises(BundleError, match="trained with another spec"):
        load_bundle(bundle)


def test_missing_and_tampered_files_are_named(trained: TrainedPipeline, tmp_path: Path) -> None:
    bundle = copy_bundle(trained, tmp_path)
    (bundle / "din.safetensors").unlink()
    with pytest.raises(BundleError, match="din.safetensors"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="not a pipeline bundle"):
        load_bundle(tmp_path)
    bundle = copy_bundle(trained, tmp_path / "second")
    meta = json.loads((bundle / "two_tower.json").read_text())
    meta["config"]["dim"] = 8
    (bundle / "two_tower.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not fit"):
        load_bundle(bundle)


def test_a_format_1_bundle_still_loads(trained: TrainedPipeline, users: EvalUsers, tmp_path: Path) -> None:
    """Format 1 differs only in the item rows' file name; registry versions published with it keep serving."""
    bundle = copy_bundle(trained, tmp_path)
    (bundle / "catalog.safetensors").rename(bundle / "catalogue.safetensors")
    meta = json.loads((bundle / "pipeline.json").read_text())
    (bundle / "pipeline.json").write_text(json.dumps({**meta, "format_version": 1}))
    expected = trained.pipeline.recommend(users.user, users.held.seen())
    assert torch.equal(load_bundle(bundle).recommend(users.user, users.held.seen()).ids, expected.ids)
    (bundle / "pipeline.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(BundleError, match="format_version 3"):
        load_bundle(bundle)
