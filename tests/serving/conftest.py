"""Serving fixtures: one tiny SASRec (and one tiny pipeline bundle) trained per session, published into a fresh
registry per test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from seekrec.data.vocab import CATALOG_FILE
from seekrec.registry import ModelRegistry
from seekrec.serving.settings import ServeSettings

pytest.importorskip("fastapi")
pytest.importorskip("faiss")

TINY_RUN = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=16",
            "train.max_epochs=1"]
TINY_PIPELINE = ["two_tower.train.max_epochs=2", "din.train.max_epochs=1", "features.sequence_len=10",
                 "features.text_dim=8", "stages.n_candidates=40", "two_tower.model.dim=16",
                 "two_tower.loss.n_negatives=16"]


@pytest.fixture(scope="session")
def trained_run(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seekrec.training.experiment import ExperimentConfig
    from seekrec.training.experiment import train_experiment

    run = tmp_path_factory.mktemp("serving-run")
    train_experiment(ExperimentConfig.load(None, TINY_RUN), sim_data_dir, run)
    return run


@pytest.fixture(scope="session")
def pipeline_bundle(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seekrec.pipeline.config import PipelineConfig
    from seekrec.pipeline.run import BUNDLE_DIR, train_pipeline

    out = tmp_path_factory.mktemp("pipeline-run")
    train_pipeline(PipelineConfig.load(None, TINY_PIPELINE), sim_data_dir, out)
    return out / BUNDLE_DIR


@pytest.fixture
def registry(tmp_path: Path, trained_run: Path) -> ModelRegistry:
    reg = ModelRegistry(tmp_path / "registry")
    reg.publish_run(trained_run)
    return reg


CONTEXT_CONFIG = {"dim": 16, "n_layers": 1, "n_heads": 2, "max_len": 12, "time_features": True,
                  "action_features": True, "relative_time_bias": True}


@pytest.fixture
def context_registry(tmp_path: Path, sim_data_dir: Path) -> ModelRegistry:
    """A registry holding a tiny SASRec with event-time / action inputs (untrained: its query-gap embeddings
    are random, so the request time moves its scores) and the dataset's catalog."""
    from seekrec.data.schema import InteractionData
    from seekrec.data.vocab import Catalog
    from seekrec.models.factory import build_model

    data = InteractionData.read(sim_data_dir)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    torch.manual_seed(0)
    model = build_model("sasrec", CONTEXT_CONFIG, data.n_items)
    registry = ModelRegistry(tmp_path / "context-registry")
    registry.publish(model, model_name="sasrec", model_config={**CONTEXT_CONFIG, "n_items": data.n_items},
                     extra_files={CATALOG_FILE: catalog.to_bytes()})
    return registry


@pytest.fixture
def settings(tmp_path: Path, registry: ModelRegistry, sim_data_dir: Path) -> ServeSettings:
    return ServeSettings(registry=registry.root, event_log=str(tmp_path / "events.db"), data_dir=sim_data_dir,
                         poll_interval_s=0.05, max_wait_ms=1.0, background_start=False)


def publish_variant(registry: ModelRegistry, seed: int, promote: bool = True, base: str | None = None,
                    channel: str | None = None) -> str:
    """Publish ``base`` (default: CURRENT) with perturbed weights and the same catalog, as an online trainer would
    (to ``channel`` instead of CURRENT when given)."""
    loaded = registry.load(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in loaded.model.parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=gen))
    return registry.publish(loaded.model, model_name=loaded.manifest["model_name"],
                            model_config=loaded.manifest["model_config"], parent=loaded.version,
                            extra={"published_at": datetime.now(timezone.utc).isoformat()},
                            extra_files={CATALOG_FILE: (loaded.directory / CATALOG_FILE).read_bytes()},
                            promote=promote, channel=channel)


@pytest.fixture
def variant() -> Callable[..., str]:
    return publish_variant
