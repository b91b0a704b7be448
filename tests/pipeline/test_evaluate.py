from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from seekrec.cli import main
from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.pipeline.evaluate import (
    EvalUsers,
    evaluate_pipeline,
    final_positions,
    format_report,
    list_metrics,
    list_positions,
    score_candidates,
    select_stages,
)
from seekrec.pipeline.run import TrainedPipeline


def test_list_metrics_count_the_target_position() -> None:
    positions = np.array([0, 2, -1, 9, 12])  # the last one is past the top 10
    found = np.array([True, True, False, True, True])
    out = list_metrics(positions, found, n_candidates=50)
    assert out["hr@10"] == pytest.approx(3 / 5)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / np.log2(4) + 1 / np.log2(11)) / 5)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 13) / 5)
    assert out["candidate_recall@50"] == pytest.approx(4 / 5)


def test_report_compares_retrievers_pipelines_and_single_stage_models(trained: TrainedPipeline,
                                                                      world: tuple[InteractionData, Split]) -> None:
    data, split = world
    report = evaluate_pipeline(trained.pipeline, data, split, "test")
    assert report["n_users"] == len(split.test) and set(report["retrieval"]) == {"two_tower", "sasrec"}
    assert set(report["pipeline"]) == {"two_tower", "sasrec"} and set(report["single_stage"]) == {"sasrec", "ease"}
    for metrics in report["retrieval"].values():
        assert metrics["recall@100"] == metrics["recall@500"] == 1.0, "48 items: everything is in the top 100"
    two_tower = report["retrieval"]["two_tower"]
    assert two_tower["hr@10"] > 0.5, "topic fans: the right topic is learned"
    # the single-stage SASRec row is exactly what the sequence-model evaluator reports
    sasrec = evaluate(ModelScorer(trained.pipeline.sequence.model, trained.pipeline.sequence.max_len), split.test,
                      data.n_items)
    assert report["single_stage"]["sasrec"]["ndcg@10"] == pytest.approx(sasrec.metrics["ndcg@10"])
    # the final list can only hold a target its retriever found
    for name, metrics in report["pipeline"].items():
        assert metrics["hr@10"] <= metrics["candidate_recall@12"], name
    text = format_report(report)
    assert "pipeline: two_tower -> din (R=12)" in text and "single stage: ease" in text


def test_list_positions_match_recommend(trained: TrainedPipeline, world: tuple[InteractionData, Split]) -> None:
    data, split = world
    users = EvalUsers.build(trained.pipeline, data, split, "valid")
    positions, found = list_positions(trained.pipeline, users, batch_size=7)
    assert positions.shape == (len(split.valid),)
    hits = positions >= 0
    assert np.all(found[hits]), "a listed target was a candidate"
    assert 0 < hits.mean() < 1


@pytest.mark.parametrize(
    "changes",
    [{}, {"n_candidates": 7}, {"retrieval_weight": 1.0}, {"diversity": "mmr", "mmr_lambda": 0.5},
     {"retriever": "sasrec", "diversity": "max_per_genre", "max_per_genre": 2}],
)
def test_scoring_once_equals_recommend(trained: TrainedPipeline, world: tuple[InteractionData, Split],
                                       changes: dict) -> None:
    """The evaluation fast path (score R candidates once, re-rank per setting) is exactly ``recommend``."""
    data, split = world
    pipeline = trained.pipeline.with_stages(dataclasses.replace(trained.pipeline.stages, **changes))
    users = EvalUsers.build(pipeline, data, split, "valid")
    expected_positions, expected_found = list_positions(pipeline, users, batch_size=11)
    scored = score_candidates(pipeline, users, 12, batch_size=17)  # more than n_candidates=7 needs
    positions, found = final_positions(pipeline, scored, users, batch_size=9)
    assert np.array_equal(positions, expected_positions) and np.array_equal(found, expected_found)


def test_stage_settings_are_chosen_on_validation_only(trained: TrainedPipeline,
                                                      world: tuple[InteractionData, Split]) -> None:
    data, split = world
    valid = EvalUsers.build(trained.pipeline, data, split, "valid")
    chosen, table = select_stages(trained.pipeline, valid, {"n_candidates": [5, 12, 24], "retrieval_weight": [0, 2]})
    assert [(row["stages"]["n_candidates"], row["stages"]["retrieval_weight"]) for row in table] == [
        (5, 0), (5, 2), (12, 0), (12, 2), (24, 0), (24, 2)]
    best = max(table, key=lambda row: row["valid"]["ndcg@10"])
    assert chosen.stages.n_candidates == best["stages"]["n_candidates"]
    assert chosen.stages.retrieval_weight == best["stages"]["retrieval_weight"]
    with pytest.raises(ValueError, match="per retriever"):
        select_stages(trained.pipeline, valid, {"retriever": ["two_tower", "sasrec"]})
    with pytest.raises(ValueError, match="validation set only"):
        select_stages(trained.pipeline, EvalUsers.build(trained.pipeline, data, split, "test"), {"n_candidates": [5]})


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "evaluate"):
        with pytest.raises(SystemExit):
            main(["pipeline", command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"seekrec pipeline {command} --" in text


def test_cli_evaluates_a_bundle(trained: TrainedPipeline, world_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    assert main(["pipeline", "evaluate", "--bundle", trained.record["bundle"], "--data", str(world_dir),
                 "--no-ease", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "retrieval: two_tower" in printed and "pipeline: sasrec" in printed
    report = json.loads(out.read_text())
    assert report["split"] == "test" and "ease" not in report["single_stage"]
    assert main(["pipeline", "evaluate", "--bundle", str(tmp_path), "--data", str(world_dir)]) == 2
    assert "not a pipeline bundle" in capsys.readouterr().err
