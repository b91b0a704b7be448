"""``seekrec.publish``: one call publishes a path as the kind it records about itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.pipeline.artifacts import BUNDLE_DIR, PIPELINE_FILE, PIPELINE_KIND
from seekrec.pipeline.publish import find_bundle
from seekrec.publish import publish_path, publisher_for
from seekrec.registry import MODEL_KIND, ModelRegistry, RegistryError


def _fake_bundle(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / PIPELINE_FILE).write_text('{"spec_version": "abc", "n_items": 3, "stages": {"retriever": "sasrec"}}')
    (directory / "din.safetensors").write_bytes(b"weights")
    return directory


def test_kind_comes_from_what_the_directory_records(tmp_path: Path) -> None:
    bundle = _fake_bundle(tmp_path / "run" / BUNDLE_DIR)
    assert find_bundle(bundle) == bundle and find_bundle(bundle.parent) == bundle
    assert publisher_for(bundle).kind == PIPELINE_KIND and publisher_for(bundle.parent).kind == PIPELINE_KIND
    assert find_bundle(tmp_path) is None
    (tmp_path / "train-run").mkdir()
    (tmp_path / "train-run" / "config.json").write_text("{}")
    assert publisher_for(tmp_path / "train-run").kind == MODEL_KIND


def test_publish_path_dispatches_and_the_manifest_records_the_kind(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    run = tmp_path / "run"
    _fake_bundle(run / BUNDLE_DIR)
    (run / "results.json").write_text('{"two_tower": {"valid": {"recall@100": 0.5, "bad": NaN}}}')
    version = publish_path(reg, run, promote=False)
    manifest = reg.manifest(version)
    assert reg.kind(version) == PIPELINE_KIND and manifest["model_name"] == "pipeline(sasrec->din)"
    assert manifest["metrics"] == {"two_tower/valid/recall@100": 0.5} and reg.current() is None
    assert set(manifest["files"]) == {PIPELINE_FILE, "din.safetensors"}


def test_a_directory_that_records_no_kind_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="neither a `seekrec train` run .*config.json.*pipeline.json"):
        publish_path(ModelRegistry(tmp_path / "reg"), tmp_path)
