"""The LLM re-ranking stage: candidates ordered as the re-ranker says, reported by the evaluation, and a real
(tiny, random) fine-tuned run loaded from its directory and carried by a bundle."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.pipeline.artifacts import load_bundle, save_bundle
from seekrec.pipeline.config import PipelineConfig
from seekrec.pipeline.evaluate import (
    EvalUsers,
    evaluate_pipeline,
    final_positions,
    format_report,
    list_positions,
    score_candidates,
)
from seekrec.pipeline.llm_stage import LLMStage, item_histories
from seekrec.pipeline.pipeline import Pipeline
from seekrec.pipeline.run import TrainedPipeline, evaluate_bundle
from seekrec.pipeline.stage_config import StageConfig
from tests.pipeline.llm_helpers import TableReranker, one_torch_thread, write_llm_run

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture
def table_pipeline(trained: TrainedPipeline) -> Pipeline:
    """The trained pipeline with a stand-in LLM stage that scores item i with a fixed random number."""
    n = trained.pipeline.spec.n_items
    table = np.random.default_rng(3).permutation(n + 1).astype(np.float32) / n
    return trained.pipeline.with_llm(LLMStage(TableReranker(table, n), "table-run"))


def test_stage_config_names_the_reranker_and_its_run() -> None:
    with pytest.raises(ValueError, match="reranker must be one of"):
        StageConfig(reranker="bert")
    with pytest.raises(ValueError, match="needs stages.llm_run"):
        StageConfig(reranker="llm")
    config = PipelineConfig.load(None, ['stages.reranker="llm"', 'stages.llm_run="runs/llm"', "stages.n_candidates=50"])
    assert config.stages.reranker == "llm" and config.stages.llm_run == "runs/llm"
    assert StageConfig().reranker == "din" and StageConfig().llm_run is None  # the DIN path stays the default


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_the_llm_stage_orders_candidates_as_the_reranker_says(table_pipeline: Pipeline, weight: float,
                                                               world: tuple[InteractionData, Split]) -> None:
    data, split = world
    pipeline = table_pipeline.with_stages(dataclasses.replace(table_pipeline.stages, retrieval_weight=weight))
    users = EvalUsers.build(pipeline, data, split, "valid")
    seen = users.held.seen()[:6]
    user = users.user.index(torch.arange(6))
    recs = pipeline.recommend(user, seen, histories=users.history_rows(0, 6))
    candidates, logits = pipeline.retrieve(user, pipeline.exclusions(seen))
    table = pipeline.llm.reranker.table
    for b in range(6):
        filled = candidates[b] > 0
        ids, retrieval = candidates[b][filled].numpy(), logits[b][filled].numpy()
        order = np.argsort(-(table[ids] + weight * retrieval), kind="stable")
        expected = ids[order][: pipeline.stages.k]
        got_ids, got_scores = recs.row(b)
        assert got_ids.tolist() == expected.tolist()
        assert not set(got_ids.tolist()) & set(seen[b].tolist())
        np.testing.assert_allclose(got_scores, 1 / (1 + np.exp(-table[got_ids])), rtol=1e-6)  # sigmoid(llm score)
    asked = pipeline.llm.reranker.histories[0]  # what the LLM read: the visible history with ratings and times
    assert asked.items.tolist() == seen[0].tolist() and asked.values is not None and asked.now is not None


def test_items_without_a_text_and_empty_slots_come_last(table_pipeline: Pipeline) -> None:
    n = table_pipeline.spec.n_items
    stage = table_pipeline.llm
    out = stage.logits(item_histories([[1, 2]]), torch.tensor([[3, 0, n + 1, 5]]))
    table = stage.reranker.table
    assert out[0].tolist() == [pytest.approx(float(table[3])), -np.inf, -np.inf, pytest.approx(float(table[5]))]
    with pytest.raises(ValueError, match="histories"):
        table_pipeline.rank(None, torch.tensor([[3]]))


def test_the_llm_needs_the_pipelines_dataset(trained: TrainedPipeline) -> None:
    with pytest.raises(ValueError, match="texts of 7 items"):
        trained.pipeline.with_llm(LLMStage(TableReranker(np.zeros(8), 7), "other-dataset"))


def test_evaluation_reports_each_retriever_reranked_by_the_llm(table_pipeline: Pipeline,
                                                                world: tuple[InteractionData, Split]) -> None:
    data, split = world
    grid = {"n_candidates": [5, 12, 40], "retrieval_weight": [0.0, 1.0]}
    report = evaluate_pipeline(table_pipeline, data, split, "test", grid=grid, baselines=())
    assert set(report["pipeline"]) == {"two_tower", "sasrec", "two_tower->llm", "sasrec->llm"}
    assert report["pipeline"]["sasrec"]["stages"]["reranker"] == "din"
    assert report["pipeline"]["sasrec->llm"]["stages"]["reranker"] == "llm"
    # the LLM's grid stops at the configured R (12): scoring candidates is its cost
    tried = {point["stages"]["n_candidates"] for point in report["selection"]["sasrec->llm"]["grid"]}
    assert tried == {5, 12}
    assert {point["stages"]["n_candidates"] for point in report["selection"]["sasrec"]["grid"]} == {5, 12, 40}
    text = format_report(report)
    assert "pipeline: sasrec -> llm (R=" in text and "pipeline: two_tower -> din (R=" in text
    # candidates scored once and re-ranked give what recommend gives
    users = EvalUsers.build(table_pipeline, data, split, "valid")
    llm = table_pipeline.with_stages(dataclasses.replace(table_pipeline.stages, retriever="sasrec"))
    scored = score_candidates(llm, users, llm.stages.n_candidates)
    reference = list_positions(llm, users)
    fast = final_positions(llm, scored, users)
    assert np.array_equal(reference[0], fast[0]) and np.array_equal(reference[1], fast[1])


def test_a_fine_tuned_run_on_disk_is_the_stage_and_travels_in_the_bundle(
        trained: TrainedPipeline, world: tuple[InteractionData, Split], sasrec_run: Path, tmp_path: Path) -> None:
    from seekrec.llm.rerank import LLMReranker

    data, split = world
    run = write_llm_run(tmp_path / "llm-run", data, sasrec_run)
    stages = dataclasses.replace(trained.pipeline.stages, retriever="sasrec", reranker="llm", llm_run=str(run))
    pipeline = trained.pipeline.with_stages(stages)
    assert isinstance(pipeline.llm.reranker, LLMReranker)
    users = EvalUsers.build(pipeline, data, split, "valid")
    histories = users.history_rows(0, 3)
    recs = pipeline.recommend(users.user.index(torch.arange(3)), users.held.seen()[:3], histories=histories)
    for b in range(3):
        candidates = recs.candidates[b][recs.candidates[b] > 0].numpy()
        scores = pipeline.llm.reranker.scores(histories[b], candidates)
        assert recs.row(b)[0].tolist() == candidates[np.argsort(-scores, kind="stable")][: stages.k].tolist()
    saved = load_bundle(save_bundle(pipeline, tmp_path / "bundle"))  # the stage config names the run
    assert saved.stages.reranker == "llm" and saved.llm is not None and saved.llm.run == str(run)


def test_evaluate_bundle_with_an_llm_run(trained: TrainedPipeline, world: tuple[InteractionData, Split],
                                         world_dir: Path, sasrec_run: Path, tmp_path: Path) -> None:
    run = write_llm_run(tmp_path / "llm-run", world[0], sasrec_run)
    report = evaluate_bundle(trained.record["bundle"], world_dir, "valid", ease=False, llm_run=run)
    assert set(report["pipeline"]) == {"two_tower", "sasrec", "two_tower->llm", "sasrec->llm"}
    assert 0.0 <= report["pipeline"]["sasrec->llm"]["ndcg@10"] <= 1.0
    assert report["pipeline"]["sasrec->llm"]["stages"]["llm_run"] == str(run)


def test_a_bundle_with_an_llm_stage_is_not_published_as_a_pipeline(table_pipeline: Pipeline, tmp_path: Path) -> None:
    from seekrec.pipeline.publish import publish_pipeline
    from seekrec.registry import ModelRegistry, RegistryError

    bundle = save_bundle(table_pipeline, tmp_path / "bundle")
    with pytest.raises(RegistryError, match="llm_rerank"):
        publish_pipeline(ModelRegistry(tmp_path / "registry"), bundle)
