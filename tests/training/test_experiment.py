"""``train_experiment`` with event-time and action inputs, end to end on a small simulated dataset, and the
serving / online loaders refusing what they cannot feed."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.api import load
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.registry.artifacts import read_run
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.run_dir import RunDir

TINY = ["model.dim=16", "model.n_layers=1", "model.n_heads=2", "model.n_routed_experts=4", "model.top_k=2",
        "data.max_len=12", "train.batch_size=32", "train.max_epochs=1", "train.eval_batch_size=64"]
CONTEXT = ["model.time_features=true", "model.action_features=true", "model.relative_time_bias=true",
           "model.relative_position_bias=true"]


@pytest.fixture(scope="module")
def context_run(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("context-run")
    train_experiment(ExperimentConfig.load(None, ["model.name=deepseek", *TINY, *CONTEXT]), sim_data_dir, out)
    return out


def test_a_run_with_event_time_inputs_trains_evaluates_and_round_trips(context_run: Path) -> None:
    run = RunDir(context_run)
    results = run.read_results()
    assert results["metrics"]["hr@10"] >= 0 and 0 <= results["metrics"]["ndcg@10"] <= 1
    spec = run.read_model()
    assert all(spec.config[flag] for flag in ("time_features", "action_features", "relative_time_bias"))
    model = run.load_best(spec.build())  # every tensor of the saved weights fits the rebuilt model
    assert model.config.needs_context and model.context_embedding is not None


def test_serving_and_the_registry_refuse_models_with_event_time_inputs(context_run: Path, tmp_path: Path) -> None:
    message = "supported for offline training and evaluation only"
    with pytest.raises(RegistryError, match=message):
        load(context_run)  # a run directory, as `seekrec.api.load` serves it
    registry = ModelRegistry(tmp_path / "registry")
    artifact = read_run(context_run)  # publishing (archiving) is fine ...
    registry.publish(artifact.model, model_name=artifact.model_name, model_config=artifact.model_config,
                     extra_files=artifact.extra_files)
    with pytest.raises(RegistryError, match=f"time_features, action_features, relative_time_bias.*{message}"):
        registry.load()  # ... loading it for the server or the online trainer is not
