"""Rankers: the prefix-shared fast path equals each prompt scored alone, on DeepSeek-V3 (MLA + MoE) and Llama;
training batches (shared or per-pair prefixes, with and without activation checkpointing) give the same
scores and gradients; the cross-encoder's assembled pairs equal the tokenizer's own pair encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seekrec.llm.mla_scoring import MLAScorer, supports
from seekrec.llm.models import LoraSettings, apply_lora, load_llm
from seekrec.llm.prompts import History
from seekrec.llm.scoring import (
    CausalRanker,
    CrossEncoderRanker,
    PairBatch,
    build_ranker,
    candidate_rows,
    score_latency,
)

ATOL = 1e-4


@pytest.fixture(params=[("deepseek_v3", "answer"), ("deepseek_v3", "likelihood"), ("llama", "answer"),
                        ("llama", "likelihood")], ids="-".join)
def any_ranker(request, tiny_causal_dir, tiny_llama_dir, make_builder) -> CausalRanker:
    """Each tiny architecture with each score: the equivalence tests run on all four."""
    arch, score = request.param
    model, tokenizer = load_llm(tiny_causal_dir if arch == "deepseek_v3" else tiny_llama_dir, "causal")
    return CausalRanker(model, tokenizer, make_builder(tokenizer), score)


@pytest.fixture(params=["answer", "likelihood"])
def causal_ranker(request, tiny_causal, make_builder) -> CausalRanker:
    model, tokenizer = tiny_causal
    return CausalRanker(model, tokenizer, make_builder(tokenizer), request.param)


@pytest.mark.parametrize("items", [[4], [4, 10, 22, 1, 29, 17]])
def test_shared_prefix_score_equals_separate_scoring(any_ranker, llm_history, items):
    causal_ranker = any_ranker
    lengths = {len(causal_ranker._segment(i)) for i in items}
    assert len(items) == 1 or len(lengths) > 1  # candidates of different lengths: right padding is exercised
    fast = causal_ranker.score(llm_history, items)
    reference = causal_ranker.score_separately(llm_history, items)
    assert fast.shape == (len(items),)
    torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0)
    assert len(items) == 1 or reference.std() > 1e-3  # the random model tells the candidates apart


def test_score_is_deterministic_and_independent_of_the_other_candidates(causal_ranker, llm_history):
    # MoE routing at eval is a deterministic top-k (no noise), and one candidate never sees another
    full = causal_ranker.score(llm_history, [4, 10, 22, 1])
    torch.testing.assert_close(causal_ranker.score(llm_history, [4, 10, 22, 1]), full, atol=0, rtol=0)
    torch.testing.assert_close(causal_ranker.score(llm_history, [22, 4]), full[[2, 0]], atol=ATOL, rtol=0)


def test_cold_user_and_empty_candidate_list(causal_ranker):
    cold = History(items=np.array([], dtype=np.int64))
    torch.testing.assert_close(causal_ranker.score(cold, [3, 8]), causal_ranker.score_separately(cold, [3, 8]),
                               atol=ATOL, rtol=0)
    assert causal_ranker.score(cold, []).shape == (0,)


def test_score_restores_train_mode(causal_ranker, llm_history):
    causal_ranker.train()
    causal_ranker.score(llm_history, [1, 2])
    assert causal_ranker.training and causal_ranker.model.training


def _groups(ranker: CausalRanker) -> tuple[list[History], list[int]]:
    histories = [History(items=np.array([3, 1, 7, 12, 5])), History(items=np.array([8])),
                 History(items=np.array([30, 2, 9, 14, 15, 16, 17, 18]))]
    items = [4, 10, 22, 5, 6, 29, 11, 12, 13]
    return histories, items


def _reference(ranker: CausalRanker, histories: list[History], items: list[int], group: int) -> torch.Tensor:
    return torch.cat([ranker.score_separately(h, items[g * group:(g + 1) * group]) for g, h in enumerate(histories)])


def test_group_batches_share_their_prefix_and_match_the_reference(any_ranker):
    causal_ranker = any_ranker
    histories, items = _groups(causal_ranker)
    batch = causal_ranker.collate(histories, items, labels=[1, 0, 0] * 3, group_size=3)
    assert batch.prefix_repeat == 3 and batch.prefix_ids.shape[0] == 3  # one (left-padded) prefix per group
    assert len(batch) == 9 and batch.n_targets == 3 and batch.labels.tolist() == [1, 0, 0] * 3
    causal_ranker.eval()
    torch.testing.assert_close(causal_ranker(batch), _reference(causal_ranker, histories, items, 3), atol=ATOL, rtol=0)
    # the same pairs given one history per pair share the prefix too
    per_pair = causal_ranker.collate([h for h in histories for _ in range(3)], items, group_size=3)
    assert per_pair.prefix_repeat == 3
    torch.testing.assert_close(per_pair.prefix_ids, batch.prefix_ids)


def test_pointwise_batches_of_different_histories(causal_ranker):
    histories, items = _groups(causal_ranker)
    per_pair = [h for h in histories for _ in range(3)]
    batch = causal_ranker.collate(per_pair, items, labels=np.ones(9), group_size=1)
    assert batch.prefix_repeat == 1 and batch.n_targets == 9
    causal_ranker.eval()
    torch.testing.assert_close(causal_ranker(batch), _reference(causal_ranker, histories, items, 3), atol=ATOL, rtol=0)


def _grads(ranker: CausalRanker, batch: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ranker.zero_grad(set_to_none=True)
    scores = ranker(batch)
    scores.square().sum().backward()
    return scores.detach(), {n: p.grad.clone() for n, p in ranker.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_scores_and_gradients(causal_ranker):
    histories, items = _groups(causal_ranker)
    batch = causal_ranker.collate(histories, items, group_size=3)
    causal_ranker.train()  # the tiny configs have no dropout: train mode is deterministic
    scores, grads = _grads(causal_ranker, batch)
    causal_ranker.set_activation_checkpointing(True)
    scores_ckpt, grads_ckpt = _grads(causal_ranker, batch)
    assert causal_ranker.model.model.gradient_checkpointing
    torch.testing.assert_close(scores_ckpt, scores, atol=ATOL, rtol=0)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-4, rtol=1e-3, msg=name)
    causal_ranker.set_activation_checkpointing(False)
    with torch.inference_mode():  # scoring still works after checkpointing was on
        causal_ranker.score(histories[0], [1, 2])


def test_pair_batch_to_len_and_errors(causal_ranker):
    histories, items = _groups(causal_ranker)
    batch = causal_ranker.collate(histories, items, group_size=3).to("cpu")
    assert isinstance(batch, PairBatch) and len(batch) == 9 and batch.tokens > 9
    with pytest.raises(ValueError, match="histories for 9 items"):
        causal_ranker.collate(histories[:2], items, group_size=3)
    with pytest.raises(ValueError, match="must divide"):
        causal_ranker.collate(histories, items, group_size=4)
    with pytest.raises(ValueError, match="labels"):
        causal_ranker.collate(histories, items, labels=[1, 0], group_size=3)


# -- cross-encoder ---------------------------------------------------------------------------------------


@pytest.fixture
def cross_ranker(tiny_cross_encoder, make_builder) -> CrossEncoderRanker:
    model, tokenizer = tiny_cross_encoder
    return build_ranker(model, tokenizer, make_builder(tokenizer), "cross_encoder")


def test_cross_encoder_pairs_equal_the_tokenizer_pair_encoding(cross_ranker, llm_history):
    items = [4, 10, 22, 1]
    batch = cross_ranker.collate([llm_history], items, group_size=4)
    tokenizer, builder = cross_ranker.tokenizer, cross_ranker.builder
    for row, item in enumerate(items):
        expected = tokenizer(builder.prefix_text(llm_history), builder.candidate_text(item))
        n = int(batch.attention_mask[row].sum())
        assert batch.input_ids[row, :n].tolist() == expected["input_ids"]
        assert batch.token_type_ids[row, :n].tolist() == expected["token_type_ids"]
    fast = cross_ranker.score(llm_history, items)
    torch.testing.assert_close(fast, cross_ranker.score_separately(llm_history, items), atol=ATOL, rtol=0)
    assert fast.std() > 0


def test_cross_encoder_truncates_the_oldest_history_tokens(cross_ranker, llm_history):
    cross_ranker.max_length = 24
    batch = cross_ranker.collate([llm_history], [4])
    candidate = cross_ranker.tokenizer(cross_ranker.builder.candidate_text(4), add_special_tokens=False)["input_ids"]
    row = batch.input_ids[0].tolist()
    assert len(row) == 24 and row[-len(candidate) - 1:-1] == candidate  # the candidate is kept whole


def test_build_ranker_rejects_unknown_kind(tiny_causal, make_builder):
    model, tokenizer = tiny_causal
    with pytest.raises(ValueError, match="kind='seq2seq'"):
        build_ranker(model, tokenizer, make_builder(tokenizer), "seq2seq")


def test_score_latency_reports_percentiles(causal_ranker, llm_history):
    stats = score_latency(causal_ranker.score, llm_history, [1, 2, 3], repeats=3, warmup=1)
    assert stats["k"] == 3 and 0 < stats["p50_ms"] <= stats["p99_ms"]


def test_candidate_rows_pack_in_order_and_isolate_segments():
    segments = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14, 15, 16]]
    rows = candidate_rows(segments, prefix_length=4, pad=0, row_tokens=5)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 0, 0], [9, 10, 0, 0, 0, 0], [11, 12, 13, 14, 15, 16]]
    assert rows.position_ids[0].tolist()[:4] == [4, 5, 6, 4] and rows.position_ids[2].tolist() == [4, 5, 6, 7, 8, 9]
    assert rows.last_row.tolist() == [0, 0, 1, 2] and rows.last_column.tolist() == [2, 3, 1, 5]
    allowed = rows.attention_mask(4, torch.float32)[0, 0] == 0  # [T, P + T] for row 0
    assert allowed[:, :4].all()  # everyone sees the prefix
    assert allowed[2, 4:7].all() and not allowed[3, 4:7].any() and allowed[3, 7]  # segment 2 sees only itself
    assert candidate_rows(segments, 4, 0, row_tokens=0).attention_mask(4, torch.float32) is None


def test_score_packs_several_candidates_per_row(tiny_llama_dir, make_builder, llm_history, monkeypatch):
    import seekrec.llm.scoring as scoring

    model, tokenizer = load_llm(tiny_llama_dir, "causal")  # not MLA: the KV-cache path
    causal_ranker = CausalRanker(model, tokenizer, make_builder(tokenizer))
    seen = []
    original = scoring.candidate_rows
    monkeypatch.setattr(scoring, "candidate_rows", lambda *a: seen.append(original(*a)) or seen[-1])
    items = [4, 10, 22, 1, 29, 17]
    scores = causal_ranker.score(llm_history, items)
    assert seen[0].input_ids.shape[0] < len(items)
    torch.testing.assert_close(scores, causal_ranker.score_separately(llm_history, items), atol=ATOL, rtol=0)


@pytest.mark.parametrize("overrides", [{}, {"rope_interleave": False}, {"q_lora_rank": None}, {"num_hidden_layers": 1},
                                       {"num_hidden_layers": 3, "v_head_dim": 12}])
def test_mla_scorer_equals_the_full_model_on_each_prompt(deepseek_config, llm_tokenizer, make_builder, llm_history,
                                                          overrides):
    """Every MLA variant (interleaved or half-split RoPE, with or without query compression, one layer where
    the first layer is also the last, v_head_dim != qk dims), with LoRA adapters that are not zero."""
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(0)
    model = apply_lora(DeepseekV3ForCausalLM(deepseek_config(len(llm_tokenizer), **overrides)),
                       LoraSettings(rank=4), "causal")
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    items = [4, 10, 22, 1, 29, 17, 4]
    for score in ("answer", "likelihood"):
        ranker = CausalRanker(model, llm_tokenizer, make_builder(llm_tokenizer), score)
        assert supports(ranker._backbone())
        torch.testing.assert_close(ranker.score(llm_history, items), ranker.score_separately(llm_history, items),
                                   atol=ATOL, rtol=0)


def test_mla_scorer_rejects_what_it_cannot_score(tiny_causal, tiny_llama_dir):
    llama, _ = load_llm(tiny_llama_dir, "causal")
    assert not supports(llama.model)
    with pytest.raises(ValueError, match="not a DeepSeek-V3"):
        MLAScorer(llama.model)
    scorer = MLAScorer(tiny_causal[0].eval().model)
    with pytest.raises(ValueError, match="prefix is empty"):
        scorer.last_hidden([], [[5, 6]])
    with pytest.raises(ValueError, match="segment is empty"):
        scorer.last_hidden([1, 5], [[5, 6], []])


def test_likelihood_is_the_log_probability_of_the_item_line(tiny_causal, make_builder, llm_history):
    """The likelihood score of an item is log p(its history line | the prefix): what the LM gives that line
    token by token, so it is <= 0, and a line's score is the sum of its tokens' conditional log-probs."""
    model, tokenizer = tiny_causal
    ranker = CausalRanker(model, tokenizer, make_builder(tokenizer), "likelihood")
    prefix, line = ranker.builder.prefix_ids(llm_history), ranker.builder.line_ids(7)
    assert ranker._segment(7) == line and line != ranker.builder.candidate_ids(7)
    with torch.inference_mode():
        total = 0.0
        for t in range(len(line)):
            logits = model(input_ids=torch.tensor([prefix + line[:t]])).logits[0, -1]
            total += float(torch.log_softmax(logits.float(), -1)[line[t]])
        score = ranker.score(llm_history, [7, 3])
    assert float(score[0]) == pytest.approx(total, abs=1e-4) and bool((score < 0).all())


def test_likelihood_needs_a_language_model(tiny_cross_encoder, make_builder):
    from seekrec.llm.scoring import build_ranker

    model, tokenizer = tiny_cross_encoder
    with pytest.raises(ValueError, match="one output logit"):
        build_ranker(model, tokenizer, make_builder(tokenizer), "cross_encoder", "likelihood")
    with pytest.raises(ValueError, match="not a causal score"):
        CausalRanker(model, tokenizer, make_builder(tokenizer), "generate")


def test_fsdp_units_are_the_transformer_blocks(tiny_causal, tiny_cross_encoder, make_builder):
    """The blocks a model names in _no_split_modules (found inside the peft wrapper too): DeepSeek-V3's decoder
    layers; BERT's layers (and, as transformers 5 lists them, its embeddings). The head never is a unit (the
    ranker reads its weight)."""
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3DecoderLayer

    model, tokenizer = tiny_causal
    lora = apply_lora(model, LoraSettings(rank=2), "causal")
    units = CausalRanker(lora, tokenizer, make_builder(tokenizer)).fsdp_units()
    assert len(units) == 2 and all(isinstance(u, DeepseekV3DecoderLayer) for u in units)
    bert, bert_tokenizer = tiny_cross_encoder
    units = CrossEncoderRanker(bert, bert_tokenizer, make_builder(bert_tokenizer)).fsdp_units()
    assert [u for u in units if isinstance(u, BertLayer)] == list(bert.bert.encoder.layer)
    assert bert.classifier not in units and len({id(u) for u in units}) == len(units)


def test_blocks_of_a_model_that_names_none_are_its_layer_list():
    from seekrec.llm.scoring import transformer_blocks

    stack = torch.nn.Module()
    stack.embed = torch.nn.Embedding(5, 4)
    stack.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    stack.heads = torch.nn.ModuleList([torch.nn.Linear(4, 1)])  # a smaller list of same-class modules
    assert transformer_blocks(stack) == list(stack.layers)
    with pytest.raises(ValueError, match="train.strategy = 'ddp'"):
        transformer_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
