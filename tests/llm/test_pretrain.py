"""Pretraining: the text (training split only, values aligned), packed epochs, a tiny end-to-end run whose
saved model loads through from_pretrained and whose validation loss falls, exact resume, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from seekrec.config import load_config  # noqa: E402
from seekrec.data.schema import IdMap, InteractionData, build_events  # noqa: E402
from seekrec.llm.pretrain import (  # noqa: E402
    CausalLM,
    LMConfig,
    PackedChunks,
    PretrainConfig,
    TokenizerSection,
    lora_parameters,
    pretrain,
    tokenizer_corpus,
    training_histories,
)
from seekrec.llm.prompts import ItemTexts, PromptConfig  # noqa: E402
from seekrec.training.config import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = LMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16,
                      qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, intermediate_size=64,
                      moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1)


def tiny_config(**train) -> PretrainConfig:
    train_config = TrainConfig(lr=1e-2, warmup_steps=2, max_epochs=3, batch_size=8, patience=5, seed=3,
                               select_metric="neg_valid_loss", checkpoint_every=0, device="cpu", **train)
    return PretrainConfig(seq_len=128, epoch_tokens=128 * 16, valid_users=20, valid_context=64,
                          tokenizer=TokenizerSection(vocab_size=400), model=TINY_MODEL,
                          prompt=PromptConfig(token_budget=128, max_history=5), train=train_config)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from seekrec.data.simulator import Simulator, SimulatorConfig

    out = tmp_path_factory.mktemp("sim-llm")
    Simulator(SimulatorConfig(n_users=40, n_items=30, mean_events_per_user=12, seed=5)).generate().write(out)
    return out


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    return out, pretrain(tiny_config(), data_dir, out)


def hand_made() -> InteractionData:
    """User 1: items 1, 2, 3, 1 (values 1..4); user 2: items 3, 2 (values 5, 6); times out of file order."""
    users, items = [1, 2, 1, 1, 2, 1], [1, 3, 2, 3, 2, 1]
    times, values = [10, 5, 20, 30, 6, 40], [1.0, 5.0, 2.0, 3.0, 6.0, 4.0]
    events = build_events(np.array(users), np.array(items), np.array(times), np.array(values), "rating")
    table = pa.table({"item_id": pa.array([1, 2, 3], pa.int64()), "title": pa.array(["Alpha", "Beta", "Gamma"]),
                      "genres": pa.array([["Drama"], [], ["War"]], pa.list_(pa.string())),
                      "year": pa.array([1990, None, 2001], pa.int32())})
    return InteractionData(events, table, pa.table({"user_id": pa.array([1, 2], pa.int64())}), IdMap.fit([1, 2]),
                           IdMap.fit([1, 2, 3]), "hand")


def test_training_histories_keep_values_with_their_events_and_hold_out_the_targets() -> None:
    histories = training_histories(hand_made(), "leave_one_out")
    h1 = histories.history(1)
    assert h1.items.tolist() == [1, 2] and h1.values.tolist() == [1.0, 2.0] and h1.now == 20
    h2 = histories.history(2)  # two events: a test target, no validation target
    assert h2.items.tolist() == [3] and h2.values.tolist() == [5.0]
    assert histories.valid_users.tolist() == [1] and histories.valid_targets.tolist() == [3]
    assert histories.valid_times.tolist() == [30]
    config = PromptConfig(history_fields=("title", "rating"))
    corpus = list(tokenizer_corpus(ItemTexts.from_data(hand_made()), config, histories))
    user_docs = [text for text in corpus if text.startswith(config.header)]
    assert user_docs == ["A viewer watched, oldest first:\n- Alpha; rated 1\n- Beta; rated 2",  # no targets
                         "A viewer watched, oldest first:\n- Gamma; rated 5"]


def test_packed_epochs_continue_through_the_corpus_and_resume_at_any_batch() -> None:
    chunks = torch.arange(10)[:, None].repeat(1, 4)  # chunk k is all k
    batches = PackedChunks(chunks, TrainConfig(batch_size=2, grad_accum=2, seed=1), per_epoch=4)
    seen = [int(b.input_ids[r, 0]) for e in range(5) for group in batches.epoch(e, 0) for b in group
            for r in range(len(b))]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))  # whole passes
    assert all(len(b) == 1 for group in batches.epoch(0, 0) for b in group)  # micro-batches of grad_accum
    first = [g[0].input_ids for g in batches.epoch(3, 0)]
    resumed = [g[0].input_ids for g in batches.epoch(3, 1)]
    assert all(torch.equal(a, b) for a, b in zip(first[1:], resumed))


def test_moe_lm_is_deterministic_in_eval_and_padding_on_the_right_changes_nothing() -> None:
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(0)
    model = CausalLM(DeepseekV3ForCausalLM(TINY_MODEL.hf_config(50, 32, pad=0, bos=1, eos=2))).eval()
    ids = torch.randint(3, 50, (1, 12))
    with torch.inference_mode():
        once, again = model(ids), model(ids)
        padded = model(torch.cat([torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1),
                                  torch.randint(3, 50, (1, 16))]))
    assert torch.equal(once, again)
    torch.testing.assert_close(padded[:1, :12], once, atol=1e-5, rtol=1e-5)
    assert set(model.expert_load()) == {"layer1"}  # layer 0 is dense, layer 1 routes


def test_pretrain_end_to_end_saves_a_loadable_model_and_learns(finished_run) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seekrec.llm.tokenizer import answer_ids

    out, results = finished_run
    valid = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "valid"]
    assert [r["epoch"] for r in valid] == [0, 1, 2, 3]  # the untrained baseline, then each epoch
    assert results["valid_loss"] < valid[0]["valid_loss"] - 0.5  # it learnt the domain's text
    assert results["valid_perplexity"] == pytest.approx(np.exp(results["valid_loss"]))
    assert results["valid_nats_per_line"] > results["valid_loss"] and results["uniform_catalogue_nats"] == np.log(30)
    assert results["tokens_seen"] == 3 * 16 * 127 and results["parameters"] > 0 and results["tokens_per_second"] > 0
    assert (out / "curves.png").is_file() and (out / "results.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "deepseek_v3" and model.config.vocab_size == len(tokenizer)
    assert answer_ids(tokenizer)  # the rankers' answers are single tokens
    ids = tokenizer("A viewer watched, oldest first:\n- ", return_tensors="pt")["input_ids"]
    best = CausalLM(AutoModelForCausalLM.from_pretrained(out / "model")).eval()
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, best(ids))


@pytest.mark.slow
def test_resume_after_a_crash_ends_with_the_same_weights(data_dir, finished_run, tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    from seekrec.llm import pretrain as module

    out = tmp_path / "run"
    config = replace(tiny_config(), train=replace(tiny_config().train, checkpoint_every=5))
    real_call = module.TargetLineLoss.__call__
    calls = {"n": 0}

    def crash_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:  # validation after epoch 2: checkpoints of epoch 1 (and step 10) exist
            raise KeyboardInterrupt
        return real_call(self)

    monkeypatch.setattr(module.TargetLineLoss, "__call__", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, data_dir, out)
    monkeypatch.setattr(module.TargetLineLoss, "__call__", real_call)
    resumed = pretrain(config, data_dir, out)
    straight = pretrain(config, data_dir, tmp_path / "straight")
    assert resumed["valid_loss"] == straight["valid_loss"]
    a, b = load_file(out / "best" / "model.safetensors"), load_file(tmp_path / "straight" / "best" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_directory_is_never_mixed(data_dir, finished_run) -> None:
    out, _ = finished_run
    with pytest.raises(ValueError, match="different config or dataset"):
        pretrain(replace(tiny_config(), seq_len=160, prompt=PromptConfig(token_budget=128)), data_dir, out)
    with pytest.raises(ValueError, match="already holds a run"):
        pretrain(tiny_config(), data_dir, out, resume=False)


def test_errors_name_what_to_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a prepared dataset.*seekrec data prepare"):
        pretrain(tiny_config(), tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="seq_len=100 is shorter than prompt.token_budget=320"):
        PretrainConfig(seq_len=100)
    with pytest.raises(ValueError, match="num_experts_per_tok=5 exceeds"):
        LMConfig(num_experts_per_tok=5)
    with pytest.raises(ValueError, match="select_metric"):
        PretrainConfig(train=TrainConfig(select_metric="ndcg@10"))


def test_the_shipped_config_loads_and_keeps_lora_under_two_percent() -> None:
    from transformers import DeepseekV3ForCausalLM

    config = load_config(PretrainConfig, ROOT / "configs" / "ml-100k-llm-pretrain.toml")
    assert config.train.select_metric == "neg_valid_loss" and config.seq_len >= config.prompt.token_budget
    lm = DeepseekV3ForCausalLM(config.model.hf_config(config.tokenizer.vocab_size, config.seq_len, pad=0, bos=1,
                                                      eos=2))
    total = sum(p.numel() for p in lm.parameters())
    assert lora_parameters(lm, 8) / total <= 0.02
    partial = load_config(PretrainConfig, None, ["train.lr=0.01", "model.hidden_size=64"])
    assert partial.train.select_metric == "neg_valid_loss" and partial.model.num_hidden_layers == LMConfig().num_hidden_layers
