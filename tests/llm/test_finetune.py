import json

import numpy as np
import pytest

from seekrec.llm.finetune import FinetuneConfig, evaluate_run, finetune
from seekrec.llm.prompts import History
from seekrec.llm.rerank import LLMReranker, LLMRunInfo, choose_weight, reranked_ranks
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.metrics_log import MetricsLog

TINY_SASREC = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=64",
               "train.warmup_steps=2", "train.eval_batch_size=64", "train.max_epochs=2", "train.lr=0.01"]


@pytest.fixture(scope="module")
def sim_data_dir(tmp_path_factory):
    """24 simulated users of 60 items, their events rated 1-5 at random (for the like label)."""
    import pyarrow as pa

    from seekrec.data.simulator import Simulator, SimulatorConfig

    data = Simulator(SimulatorConfig(n_users=24, n_items=60, mean_events_per_user=10, seed=3)).generate()
    ratings = np.random.default_rng(0).integers(1, 6, data.events.num_rows).astype(np.float32)
    data.events = data.events.set_column(4, "value", pa.array(ratings))
    out = tmp_path_factory.mktemp("rated-sim")
    data.write(out)
    return out


@pytest.fixture(scope="module")
def retriever_run(sim_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec")
    train_experiment(ExperimentConfig.load(None, TINY_SASREC), sim_data_dir, out)
    return out


def tiny_overrides(model_dir, retriever_run, *overrides, kind="causal"):
    """The ``key=value`` list of a tiny fine-tuning run (``overrides`` last, so they win)."""
    base = [f"model.path={model_dir}", f"model.kind={kind}", f"retriever_run={retriever_run}",
            "n_candidates=6", "n_negatives=3", "positions_per_user=1", "valid_users=6",
            "prompt.max_history=3", "prompt.token_budget=160", "lora.rank=4", "lora.dropout=0.0",
            "train.lr=0.002", "train.batch_size=30", "train.max_epochs=1", "train.warmup_steps=1",
            "train.device=cpu", "weights=[0.0, 0.5, 2.0]"]
    return [*base, *overrides]


def tiny_config(model_dir, retriever_run, *overrides, kind="causal"):
    return FinetuneConfig.load(None, tiny_overrides(model_dir, retriever_run, *overrides, kind=kind))


@pytest.fixture(scope="module")
def rerank_run(sim_data_dir, retriever_run, tiny_causal_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm-rerank") / "run"
    return out, finetune(tiny_config(tiny_causal_dir, retriever_run, "weights=[0.0, 0.3, 5.0]"), sim_data_dir, out)


def test_a_lora_rerank_run_has_its_files_metrics_and_per_user_arrays(rerank_run):
    out, record = rerank_run
    for name in ("config.json", "llm.json", "items.json", "adapter/adapter_config.json", "metrics.jsonl",
                 "curves.png", "results.json", "ranks.npz"):
        assert (out / name).exists(), name
    assert 0 < record["parameters"]["fraction"] < 0.5 and record["weights"] == "adapter"
    assert record["step_seconds"] > 0 and record["memory"]["peak_rss_mb"] > 0
    for split in ("valid", "test"):
        assert {"ndcg@10", "hr@10", "mrr"} <= set(record[split]["retriever"])
        assert {"ndcg@10", "hr@10", "mrr", "ndcg@10_llm", "auc", "gauc"} <= set(record[split]["reranked"])
    assert "logloss" not in record["valid"]["reranked"]
    kinds = [r["kind"] for r in MetricsLog(out / "metrics.jsonl").read()]
    assert kinds.count("valid") == 2 and kinds[-1] == "test"  # the untrained model, then epoch 1
    ranks = np.load(out / "ranks.npz")
    assert ranks["test_reranked_ndcg"].mean() == pytest.approx(record["test"]["reranked"]["ndcg@10"])
    assert ranks["valid_retriever_ndcg"].mean() == pytest.approx(record["valid"]["retriever"]["ndcg@10"])


def test_the_reranker_loads_the_run_and_reproduces_its_evaluation(rerank_run, sim_data_dir):
    out, record = rerank_run
    reranker = LLMReranker.load(out)  # adapter merged
    assert reranker.weight == record["weight"] and reranker.n_items == 60 and reranker.n_candidates == 6
    candidates = np.load(out / "ranks.npz")["test_candidates"][0]
    history = History(np.array([3, 1, 7]))
    scores = reranker.scores(history, candidates)
    items, combined = reranker.rerank(history, candidates, np.zeros(6))
    assert np.all(np.diff(combined) <= 0) and sorted(items) == sorted(candidates)
    assert np.allclose(np.sort(scores)[::-1], combined, atol=1e-5)
    evaluated = evaluate_run(out, sim_data_dir, "test")
    assert evaluated["reranked"]["ndcg@10"] == pytest.approx(record["test"]["reranked"]["ndcg@10"], abs=1e-6)


def test_the_weight_is_chosen_on_validation_only(rerank_run):
    out, record = rerank_run
    ranks = np.load(out / "ranks.npz")
    assert LLMRunInfo.read(out).weight == record["weight"] == float(ranks["weight"])

    def arrays(split):
        return [ranks[f"{split}_{name}"] for name in ("llm_scores", "logits", "target_positions", "retriever_ranks")]

    w, grid = choose_weight(*arrays("valid"), [0.0, 0.3, 5.0])  # from the validation arrays alone
    assert w == record["weight"]
    assert {float(k): v for k, v in record["weight_grid"].items()} == pytest.approx(grid, abs=1e-6)
    assert np.array_equal(reranked_ranks(*arrays("test"), w), ranks["test_reranked_ranks"])


@pytest.mark.slow
@pytest.mark.parametrize(("label", "training"), [
    ("click", ["train.grad_accum=3", "train.activation_checkpointing=true"]),
    ("like", ["train.precision=bf16"]),
])
def test_pointwise_lora_finetune(sim_data_dir, retriever_run, tiny_causal_dir, tmp_path, label, training):
    record = finetune(tiny_config(tiny_causal_dir, retriever_run, "task=pointwise", f"label={label}", *training),
                      sim_data_dir, tmp_path / "run")
    losses = [r["loss"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl").read() if r["kind"] == "train"]
    assert losses and np.all(np.isfinite(losses))
    assert record["task"] == "pointwise" and record["label"] == label
    assert "logloss" in record["valid"]["reranked"]
    if label == "like":  # the rated target's score against rating >= 4
        assert {"like_auc", "like_logloss"} <= set(record["test"]["reranked"])
    assert LLMRunInfo.read(tmp_path / "run").task == "pointwise"


def test_full_finetune_of_a_cross_encoder(sim_data_dir, retriever_run, tiny_cross_encoder_dir, tmp_path):
    out = tmp_path / "run"
    record = finetune(tiny_config(tiny_cross_encoder_dir, retriever_run, "full=true", "task=pointwise",
                                  kind="cross_encoder"), sim_data_dir, out)
    assert record["weights"] == "full" and record["parameters"]["fraction"] == 1.0
    assert (out / "model" / "config.json").is_file() and not (out / "adapter").exists()
    reranker = LLMReranker.load(out)
    assert reranker.info.kind == "cross_encoder" and reranker.info.lora is None


def test_export_is_self_contained(rerank_run, tmp_path):
    out, _ = rerank_run
    history, items = History(np.array([5, 9])), np.array([1, 2, 3, 4])
    before = LLMReranker.load(out, merge=False).scores(history, items)
    exported = LLMReranker.load(out, merge=False).export(tmp_path / "export")
    info = json.loads((exported / "llm.json").read_text())
    assert info["weights"] == "full"
    loaded = LLMReranker.load(exported, model=tmp_path / "nowhere")  # the base model is not needed
    assert np.allclose(loaded.scores(history, items), before, atol=1e-4)
    with pytest.raises(FileExistsError):
        loaded.export(exported)


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(sim_data_dir, retriever_run, tiny_causal_dir, tmp_path,
                                                            monkeypatch):
    from seekrec.training.trainer import Trainer

    overrides = ["train.max_epochs=2", "train.checkpoint_every=2", "train.batch_size=40", "lora.dropout=0.1"]
    clean = finetune(tiny_config(tiny_causal_dir, retriever_run, *overrides), sim_data_dir, tmp_path / "clean")
    validation = Trainer._validation

    def stop_in_epoch_2(self, epoch, *rest):
        if epoch == 2:
            raise KeyboardInterrupt
        return validation(self, epoch, *rest)

    monkeypatch.setattr(Trainer, "_validation", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_config(tiny_causal_dir, retriever_run, *overrides), sim_data_dir, tmp_path / "resumed")
    monkeypatch.setattr(Trainer, "_validation", validation)
    resumed = finetune(tiny_config(tiny_causal_dir, retriever_run, *overrides), sim_data_dir, tmp_path / "resumed")
    losses = [[r["loss"] for r in MetricsLog(tmp_path / name / "metrics.jsonl").read() if r["kind"] == "train"]
              for name in ("clean", "resumed")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert resumed["test"]["reranked"] == pytest.approx(clean["test"]["reranked"], rel=1e-5)


def test_config_errors_are_named(tmp_path):
    with pytest.raises(ValueError, match="missing model"):
        FinetuneConfig.load(None, ["retriever_run=x"])
    with pytest.raises(ValueError, match="label = 'like' is a pointwise task"):
        FinetuneConfig.load(None, ["model.path=x", "retriever_run=x", "label=like"])
    with pytest.raises(ValueError, match="model.kind"):
        FinetuneConfig.load(None, ["model.path=x", "model.kind=seq2seq", "retriever_run=x"])
    with pytest.raises(ValueError, match="no dataset"):
        finetune(FinetuneConfig.load(None, ["model.path=x", "retriever_run=x"]), None, tmp_path)
    with pytest.raises(ValueError, match="model.score must be one of"):
        FinetuneConfig.load(None, ["model.path=x", "retriever_run=x", "model.score=perplexity"])
    with pytest.raises(ValueError, match="needs a language model"):
        FinetuneConfig.load(None, ["model.path=x", "retriever_run=x", "model.score=likelihood",
                                   "model.kind=cross_encoder"])
    with pytest.raises(ValueError, match="use task = 'rerank'"):
        FinetuneConfig.load(None, ["model.path=x", "retriever_run=x", "model.score=likelihood", "task=pointwise"])


def test_a_likelihood_rerank_run_serves_the_scores_it_was_evaluated_with(sim_data_dir, retriever_run,
                                                                          tiny_causal_dir, tmp_path):
    """model.score = likelihood: trained listwise on log p(line | history), recorded in llm.json, and the loaded
    re-ranker reproduces the run's test evaluation."""
    out = tmp_path / "run"
    record = finetune(tiny_config(tiny_causal_dir, retriever_run, "model.score=likelihood"), sim_data_dir, out)
    assert record["score"] == "likelihood" and LLMRunInfo.read(out).score == "likelihood"
    losses = [r["loss"] for r in MetricsLog(out / "metrics.jsonl").read() if r["kind"] == "train"]
    assert losses and np.all(np.isfinite(losses))
    reranker = LLMReranker.load(out)
    assert reranker.ranker.score_kind == "likelihood"
    assert np.all(np.load(out / "ranks.npz")["test_llm_scores"] < 0)  # log-probabilities
    evaluated = evaluate_run(out, sim_data_dir, "test")
    assert evaluated["reranked"]["ndcg@10"] == pytest.approx(record["test"]["reranked"]["ndcg@10"], abs=1e-6)


@pytest.mark.parametrize("name", ["ml-100k-llm-rerank", "ml-100k-llm-pointwise", "ml-100k-llm-likelihood"])
def test_the_named_configs_load_and_can_serve(name):
    from pathlib import Path

    config = FinetuneConfig.load(Path(__file__).resolve().parents[2] / "configs" / f"{name}.toml")
    assert config.model.kind == "causal" and config.n_candidates == 50 and 0.0 in config.weights
    assert not config.prompt.needs_context  # prompts of item ids only: a server can run them
    assert config.train.select_metric == ("ndcg@10" if config.task == "rerank" else "auc")
