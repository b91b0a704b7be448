from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.features.examples import build_examples
from seekrec.pipeline.config import (
    PipelineConfig,
    RankerTraining,
    StageConfig,
    TwoTowerTraining,
)
from seekrec.pipeline.features import held_out
from seekrec.pipeline.run import TrainedPipeline
from seekrec.pipeline.train_din import RetrievedNegatives, train_din
from seekrec.training.config import TrainConfig
from seekrec.training.metrics_log import MetricsLog
from seekrec.training.run_dir import RunDir
from tests.pipeline.helpers import tiny_config


def valid_records(run_dir: Path) -> list[dict]:
    return [r for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "valid"]


def test_two_tower_training_lowers_validation_loss_and_stops_early(trained: TrainedPipeline) -> None:
    run = Path(trained.record["bundle"]).parent / "two_tower"
    valid = valid_records(run)
    untrained, best = valid[0], trained.record["two_tower"]["valid"]
    assert untrained["epoch"] == 0
    assert best["loss"] < untrained["loss"] - 0.3, "full-softmax validation loss fell"
    assert best["ndcg@10"] > untrained["ndcg@10"] + 0.1
    epochs, best_epoch = trained.record["two_tower"]["epochs"], trained.record["two_tower"]["best_epoch"]
    assert best_epoch >= 1 and epochs < 40, "patience 3 stopped it well before max_epochs"
    assert epochs == best_epoch + 3, "stopped after exactly `patience` validations without improvement"
    meta = json.loads((run / "best" / "meta.json").read_text())
    assert meta["epoch"] == best_epoch and meta["spec_version"] == trained.pipeline.spec.version


def test_ranker_learns_and_calibration_fixes_its_probabilities(trained: TrainedPipeline) -> None:
    run = Path(trained.record["bundle"]).parent / "din"
    valid = valid_records(run)
    assert trained.record["din"]["valid"]["auc"] > valid[0]["auc"] + 0.1
    test = trained.record["din"]["report"]["test"]
    assert test["raw"]["auc"] > 0.6
    assert test["calibrated"]["auc"] == pytest.approx(test["raw"]["auc"]), "a monotone map keeps the ranking"
    assert test["calibrated"]["logloss"] < test["raw"]["logloss"]
    assert test["calibrated"]["ece"] < test["raw"]["ece"]
    train = [r for r in MetricsLog(run / "metrics.jsonl").read() if r["kind"] == "train"]
    assert {"loss", "lr", "grad_norm", "mean_probability"} <= set(train[0])


def test_runs_are_plottable(trained: TrainedPipeline) -> None:
    root = Path(trained.record["bundle"]).parent
    for name in ("two_tower", "din"):
        assert RunDir(root / name).plot().read_bytes()[:4] == b"\x89PNG"


def test_held_out_targets_carry_their_event_times(world: tuple[InteractionData, Split]) -> None:
    data, split = world
    users, items, times = data.interactions()
    for which in ("valid", "test"):
        held = held_out(data, split, which)
        assert np.array_equal(held.targets, split.eval_set(which).targets)
        for u, target, as_of in zip(held.users[:10], held.targets[:10], held.as_of[:10], strict=True):
            mine = np.flatnonzero(users == u)
            last = mine[np.argsort(times[mine], kind="stable")][-1 if which == "test" else -2]
            assert items[last] == target and as_of == times[last] + 1
            visible = held.history.timestamps[held.history.offsets[u]:held.history.offsets[u + 1]]
            assert visible.size and np.all(visible < as_of), "every visible event reaches the features"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: StageConfig(k=20, n_candidates=10), "n_candidates"),
        (lambda: StageConfig(retriever="bm25"), "stages.retriever"),
        (lambda: StageConfig(diversity="shuffle"), "stages.diversity"),
        (lambda: StageConfig(mmr_lambda=1.5), "mmr_lambda"),
        (lambda: TwoTowerTraining(train=TrainConfig(select_metric="auc")), "two_tower.train.select_metric"),
        (lambda: RankerTraining(calibration="isotonic"), "din.calibration"),
        (lambda: RankerTraining(model={"user": {}}), "schemas come from the fitted feature spec"),
        (lambda: PipelineConfig.load(None, ["stages.retriever=sasrec"]), "sasrec_run"),
        (lambda: PipelineConfig.load(None, ["din.train.lrate=0.1"]), "unknown key"),
        (lambda: PipelineConfig.load(None, ["rerank.k=3"]), "unknown key"),
    ],
)
def test_config_errors_say_what_to_change(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_config_sections_keep_their_own_defaults() -> None:
    config = PipelineConfig.load(None, ["two_tower.train.lr=0.001", "din.model.embed_dim=8"])
    assert config.two_tower.train.lr == 0.001 and config.two_tower.train.select_metric == "recall@100"
    assert config.din.train.select_metric == "auc" and config.din.model["embed_dim"] == 8
    assert config.din.model["key_columns"] == ["genres"], "defaults fill what the override leaves out"
    assert math.isclose(config.two_tower.loss.n_negatives, 256)
    assert torch.tensor(config.features.windows_days).tolist() == [1.0, 7.0]


def test_retrieved_negatives_come_from_each_rows_candidates() -> None:
    candidates = torch.tensor([[5, 6, 0, 0], [0, 0, 0, 0], [7, 8, 9, 3]], dtype=torch.int32)
    drawn = RetrievedNegatives(candidates).draw(torch.tensor([0, 1, 2]), 50, torch.Generator().manual_seed(0))
    assert set(drawn[0].tolist()) == {5, 6} and set(drawn[1].tolist()) == {0} and set(drawn[2].tolist()) == {7, 8, 9, 3}


def test_ranker_trains_on_the_retrievers_candidates(trained: TrainedPipeline, world: tuple[InteractionData, Split],
                                                    tmp_path: Path) -> None:
    data, split = world
    pipeline = trained.pipeline
    config = dataclasses.replace(tiny_config("unused").din, sampler="retrieval", retrieval_candidates=10)
    examples = build_examples(pipeline.spec, data, split.train)
    model, calibrator, fit, report = train_din(config, pipeline.spec, data, split, examples, pipeline.catalog,
                                               tmp_path, retriever=pipeline.retriever)
    assert report["negatives"] == "retrieval" and fit.epochs_run >= 1
    test = report["test"]
    assert 0.0 <= test["raw"]["auc"] <= 1.0 and test["calibrated"]["ece"] < test["raw"]["ece"]
    with pytest.raises(ValueError, match="retriever"):
        train_din(config, pipeline.spec, data, split, examples, pipeline.catalog, tmp_path / "again")
