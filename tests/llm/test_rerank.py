import json

import numpy as np
import pytest

from seekrec.llm.rerank import (
    LLMReranker,
    LLMRunInfo,
    choose_weight,
    combined_scores,
    per_user_ndcg,
    ranking_metrics,
    reranked_ranks,
)


def test_a_target_among_the_candidates_is_ranked_by_the_combined_score():
    llm = np.array([[0.0, 3.0, 1.0, 2.0]])  # candidates, retriever's best first
    logits = np.array([[4.0, 3.0, 2.0, 1.0]])
    # w = 0: the LLM alone puts column 1 first, column 3 second, column 2 third
    assert reranked_ranks(llm, logits, np.array([2]), np.array([2]), 0.0).tolist() == [2]
    assert reranked_ranks(llm, logits, np.array([1]), np.array([1]), 0.0).tolist() == [0]
    # w = 1: combined 4, 6, 3, 3 -> column 0 is second, column 2 ties column 3 (ties count against it)
    assert reranked_ranks(llm, logits, np.array([0]), np.array([0]), 1.0).tolist() == [1]
    assert reranked_ranks(llm, logits, np.array([2]), np.array([2]), 1.0).tolist() == [3]


def test_a_target_below_the_candidates_keeps_its_retriever_rank():
    llm = np.array([[5.0, -5.0], [0.0, 0.0]])
    logits = np.array([[1.0, 0.5], [1.0, 0.5]])
    ranks = reranked_ranks(llm, logits, np.array([-1, -1]), np.array([7, 2]), 0.5)
    assert ranks.tolist() == [7, 2]  # whatever the LLM says, R candidates stay ahead of it


def test_huge_weights_give_back_the_retriever_order():
    rng = np.random.default_rng(0)
    logits = np.sort(rng.normal(size=(20, 6)), axis=1)[:, ::-1].copy()
    llm = rng.normal(size=(20, 6))
    positions = rng.integers(0, 6, size=20)
    assert reranked_ranks(llm, logits, positions, positions, 1e6).tolist() == positions.tolist()


def test_the_weight_is_chosen_by_validation_ndcg_and_ties_go_to_the_first():
    logits = np.array([[2.0, 1.0], [2.0, 1.0]])
    llm = np.array([[0.0, 1.0], [0.0, 1.0]])  # the LLM prefers column 1
    targets_second = np.array([1, 1])  # the LLM is right: the smallest weight wins
    w, by_w = choose_weight(llm, logits, targets_second, targets_second, [0.0, 0.5, 2.0])
    assert w == 0.0 and by_w[0.0] == pytest.approx(1.0) and by_w[2.0] < 1.0
    targets_first = np.array([0, 0])  # the retriever is right: a weight that keeps its order wins
    w, _ = choose_weight(llm, logits, targets_first, targets_first, [0.0, 0.5, 2.0])
    assert w == 2.0
    with pytest.raises(ValueError, match="grid is empty"):
        choose_weight(llm, logits, targets_first, targets_first, [])


def test_metrics_and_per_user_ndcg_agree():
    ranks = np.array([0, 3, 12, 1])
    per_user = per_user_ndcg(ranks)
    assert per_user[2] == 0.0 and per_user[0] == 1.0
    assert ranking_metrics(ranks)["ndcg@10"] == pytest.approx(per_user.mean())
    assert ranking_metrics(ranks)["hr@10"] == pytest.approx(0.75)


def test_nan_scores_and_shape_mismatches_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        combined_scores(np.array([np.nan]), np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        combined_scores(np.zeros(2), np.zeros(3), 0.0)


def test_loading_errors_name_the_run_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such LLM run directory"):
        LLMReranker.load(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="llm.json: missing"):
        LLMReranker.load(tmp_path)
    info = LLMRunInfo(base_model=str(tmp_path / "gone"), kind="causal", weights="adapter", prompt={}, weight=0.5,
                      n_candidates=5, n_items=3, retriever_run="r", task="rerank")
    info.write(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"base model .*gone.*--model"):
        LLMReranker.load(tmp_path)
    doc = json.loads((tmp_path / "llm.json").read_text())
    del doc["weight"]
    (tmp_path / "llm.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="no 'weight' field"):
        LLMReranker.load(tmp_path)
