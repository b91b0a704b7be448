import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from seekrec.models.factory import model_config_class
from seekrec.pipeline.artifacts import BundleError
from seekrec.pipeline.run import load_sequence_run
from seekrec.registry import ModelRegistry
from seekrec.registry.artifacts import RegistryError, read_run
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.run_dir import RunDir, RunDirError, RunModel

TINY = ["model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=16", "train.max_epochs=1",
        "train.eval_batch_size=64"]
HISTORY = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])


def _train(data: Path, out: Path, *overrides: str) -> dict:
    return train_experiment(ExperimentConfig.load(None, [*TINY, *overrides]), data, out)


@pytest.fixture(scope="module")
def sasrec_run(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sasrec-run")
    _train(sim_data_dir, out, "model.name=sasrec", "model.max_len=16")
    return out


@pytest.fixture(scope="module")
def side_run(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deepseek-run")
    _train(sim_data_dir, out, "model.name=deepseek", "model.use_item_features=true", "model.n_heads=2",
           "model.n_routed_experts=4", "model.top_k=2")
    return out


def _legacy_copy(run: Path, tmp_path: Path) -> Path:
    """The run as written before model.json existed."""
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    (legacy / "model.json").unlink()
    return legacy


def _scores(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval().score_all(HISTORY)


def test_model_json_holds_the_fully_resolved_model(sasrec_run: Path) -> None:
    doc = json.loads((sasrec_run / "model.json").read_text())
    n_items = json.loads((sasrec_run / "results.json").read_text())["n_items"]
    assert doc["name"] == "sasrec" and doc["use_item_features"] is False
    assert set(doc["config"]) == {f.name for f in dataclasses.fields(model_config_class("sasrec"))}
    assert doc["config"]["n_items"] == n_items and doc["config"]["dim"] == 16
    assert doc["config"]["max_len"] == 16, "an explicit model.max_len wins over data.max_len"


def test_model_json_records_side_features_from_the_data(side_run: Path) -> None:
    spec = RunDir(side_run).read_model()
    assert spec.name == "deepseek" and spec.use_item_features and spec.config["n_side_features"] > 0
    assert spec.max_len == 12, "max_len defaults to data.max_len"


def test_round_trip_builds_the_trained_model(sasrec_run: Path) -> None:
    run = RunDir(sasrec_run)
    spec = run.read_model()
    assert RunModel.from_dict(spec.to_dict()) == spec
    model = run.load_best(spec.build())
    reference = spec.build()
    from safetensors.torch import load_model

    load_model(reference, str(sasrec_run / "best" / "model.safetensors"))
    assert torch.equal(_scores(model), _scores(reference))
    assert run.read_best_meta()["valid"] and run.metrics_log.read()[-1]["kind"] == "test"


@pytest.mark.parametrize("which", ["sasrec_run", "side_run"])
def test_a_run_without_model_json_resolves_to_the_same_model(which: str, request: pytest.FixtureRequest,
                                                             tmp_path: Path) -> None:
    run = request.getfixturevalue(which)
    legacy = _legacy_copy(run, tmp_path)
    assert RunDir(legacy).read_model() == RunDir(run).read_model()
    published = read_run(legacy)
    assert published.model_config == RunDir(run).read_model().config
    assert torch.equal(_scores(published.model), _scores(read_run(run).model))


def test_legacy_run_publishes_and_loads_as_a_retriever(sasrec_run: Path, tmp_path: Path) -> None:
    legacy = _legacy_copy(sasrec_run, tmp_path)
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish_run(legacy)
    n_items = RunDir(sasrec_run).read_model().n_items
    model, max_len, name = load_sequence_run(legacy, n_items)
    assert (max_len, name) == (16, "sasrec")
    assert torch.equal(_scores(model), _scores(registry.load().model))


def test_legacy_run_without_results_names_the_file(sasrec_run: Path, tmp_path: Path) -> None:
    legacy = _legacy_copy(sasrec_run, tmp_path)
    (legacy / "results.json").unlink()
    with pytest.raises(RunDirError, match="results.json: missing"):
        RunDir(legacy).read_model()


def test_missing_or_foreign_weights_are_named(sasrec_run: Path, side_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    shutil.copy(side_run / "best" / "model.safetensors", run / "best" / "model.safetensors")
    with pytest.raises(RegistryError, match="model.safetensors"):
        read_run(run)
    (run / "best" / "model.safetensors").unlink()
    with pytest.raises(RunDirError, match="model.safetensors: missing"):
        RunDir(run).load_best(RunDir(run).read_model().build())


def test_sequence_run_checks_the_dataset_and_side_features(sasrec_run: Path, side_run: Path) -> None:
    n_items = RunDir(sasrec_run).read_model().n_items
    with pytest.raises(BundleError, match="use a run trained on this dataset"):
        load_sequence_run(sasrec_run, n_items + 1)
    with pytest.raises(BundleError, match="use_item_features"):
        load_sequence_run(side_run, n_items)
