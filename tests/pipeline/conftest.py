"""One tiny topic world on disk, a SASRec trained on it, and a pipeline trained on it (with that SASRec),
shared by every pipeline test: training them once takes a few seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.training.experiment import ExperimentConfig
from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split, load_split
from seekrec.pipeline.run import TrainedPipeline, train_pipeline
from seekrec.training.experiment import train_experiment
from tests.pipeline.helpers import tiny_config, topic_world


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("topic-world")
    topic_world().write(path)
    return path


@pytest.fixture(scope="session")
def world(world_dir: Path) -> tuple[InteractionData, Split]:
    return load_split(world_dir)


@pytest.fixture(scope="session")
def sasrec_run(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sasrec")
    config = ExperimentConfig.load(None, ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=8",
                                          "train.batch_size=16", "train.max_epochs=2", "train.eval_batch_size=64",
                                          "train.device=cpu"])
    train_experiment(config, world_dir, run)
    return run


@pytest.fixture(scope="session")
def trained(world_dir: Path, sasrec_run: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedPipeline:
    out = tmp_path_factory.mktemp("pipeline-run")
    return train_pipeline(tiny_config(str(world_dir), str(sasrec_run)), None, out)
