from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch

from seekrec.models.deepseek_rec import DeepSeekRec, DeepSeekRecConfig, backbone_config
from seekrec.models.layers.masking import attention_allowed, positions_from_mask

from .helpers import ALL_FLAGS, N_ITEMS, TINY, left_pad, make_model, with_context


def _config(**overrides: Any) -> DeepSeekRecConfig:
    return DeepSeekRecConfig(n_items=N_ITEMS, **{**TINY["deepseek"], **overrides})


def test_backbone_config_maps_fields_and_drops_token_embedding() -> None:
    config = _config(n_dense_layers=1, n_routed_experts=8, n_expert_groups=2, topk_groups=1, top_k=2)
    hf = backbone_config(config)
    assert (hf.hidden_size, hf.num_hidden_layers, hf.n_routed_experts, hf.num_experts_per_tok) == (32, 2, 8, 2)
    assert (hf.n_group, hf.topk_group, hf.first_k_dense_replace, hf.vocab_size) == (2, 1, 1, 1)
    assert (hf.q_lora_rank, hf.kv_lora_rank, hf.qk_rope_head_dim) == (16, 16, 8)
    model = DeepSeekRec(config)
    assert model.backbone.embed_tokens is None
    assert not any("embed_tokens" in name for name, _ in model.named_parameters())
    assert list(model.expert_load()) == []  # nothing routed yet
    model.eval()(left_pad([[1, 2, 3]], 4))
    assert list(model.expert_load()) == ["layer1"]  # layer 0 is dense


def test_matches_transformers_reference_with_2d_padding_mask() -> None:
    """Our prepared 4D mask + positions give the same real-position outputs as HF's own mask path."""
    model = make_model("deepseek").eval()
    ids = left_pad([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [9]], 8)
    mask = ids != 0
    with torch.no_grad():
        ours = model(ids)
        reference = model.backbone(
            inputs_embeds=model.encode_items(ids),
            attention_mask=mask.long(),
            position_ids=positions_from_mask(mask),
        ).last_hidden_state
    torch.testing.assert_close(ours[mask], reference[mask], atol=1e-5, rtol=1e-5)


def test_rotary_positions_are_relative() -> None:
    """Shifting every position by a constant changes no real output: DeepSeek-rec sees only offsets between
    items, so where a history starts (one item later at test than at validation once max_len cuts it, or
    after more left padding) cannot matter to it."""
    model = make_model("deepseek").eval()
    ids = left_pad([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]], 8)
    mask = ids != 0
    hidden = []
    with torch.no_grad():
        for shift in (0, 37):
            hidden.append(model.backbone(inputs_embeds=model.encode_items(ids), attention_mask=mask.long(),
                                         position_ids=positions_from_mask(mask) + shift).last_hidden_state)
    torch.testing.assert_close(hidden[1][mask], hidden[0][mask], atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_attention_agree() -> None:
    sdpa = make_model("deepseek").eval()
    eager = make_model("deepseek", attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids = left_pad([[5, 6, 7], [], [1, 2, 3, 4, 5, 6]], 7)
    with torch.no_grad():
        torch.testing.assert_close(eager(ids), sdpa(ids), atol=1e-5, rtol=1e-5)


def test_expert_load_sums_to_one_and_counts_only_real_tokens() -> None:
    model = make_model("deepseek").eval()
    rows = [[3, 4, 5], [7, 8, 9, 10, 11]]
    n_real, top_k = 8, TINY["deepseek"]["top_k"]
    with torch.no_grad():
        model(left_pad(rows, 5))
        tight = model.expert_load()
        model(left_pad(rows, 16))  # 24 padded tokens are routed too, but must not be counted
        padded = model.expert_load()
    assert list(tight) == ["layer0", "layer1"]
    for layer, shares in padded.items():
        assert len(shares) == TINY["deepseek"]["n_routed_experts"]
        assert sum(shares) == pytest.approx(1.0)
        slots = [share * n_real * top_k for share in shares]
        assert slots == pytest.approx([round(s) for s in slots]), "shares are counts over real slots"
        assert shares == pytest.approx(tight[layer], abs=1e-6)


def _skewed_model() -> DeepSeekRec:
    model = make_model("deepseek", dropout=0.0).train()
    with torch.no_grad():
        for gate in model.routers.values():
            gate.weight.normal_(0.0, 1.0)  # spread scores so the bias can steer them
            gate.e_score_correction_bias.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    return model


def test_bias_update_moves_routing_toward_balance() -> None:
    model = _skewed_model()
    ids = torch.randint(1, N_ITEMS + 1, (16, 12), generator=torch.Generator().manual_seed(0))
    model(ids)
    initial = model.auxiliary_stats()["moe_max_load_ratio"].item()
    loads = model.expert_load()["layer0"]
    bias_before = model.routers["layer0"].e_score_correction_bias.clone()
    model.update_routing_bias(0.02)
    step = model.routers["layer0"].e_score_correction_bias - bias_before
    mean = sum(loads) / len(loads)
    assert step.tolist() == pytest.approx([0.02 * ((mean > x) - (mean < x)) for x in loads])
    for _ in range(30):
        model(ids)
        model.update_routing_bias(0.02)
    model(ids)
    final = model.auxiliary_stats()["moe_max_load_ratio"].item()
    assert initial > 1.4 and final < 1.25, (initial, final)


def test_eval_forwards_do_not_move_the_bias() -> None:
    model = _skewed_model().eval()
    with torch.no_grad():
        model(torch.randint(1, N_ITEMS + 1, (4, 6)))
    before = [g.e_score_correction_bias.clone() for g in model.routers.values()]
    model.update_routing_bias()
    after = [g.e_score_correction_bias for g in model.routers.values()]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_sequence_balance_loss_is_alpha_per_layer_under_uniform_affinity_and_trains_the_router() -> None:
    model = make_model("deepseek", balance_loss_alpha=0.01).train()
    with torch.no_grad():
        for gate in model.routers.values():
            gate.weight.zero_()  # sigmoid(0) for every expert: P_i = 1/E, so sum_i f_i P_i = 1
    model(left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], 6))
    aux = model.auxiliary_loss()
    assert aux.item() == pytest.approx(0.01 * 2)
    aux.backward()
    assert all(g.weight.grad is not None for g in model.routers.values())
    assert make_model("deepseek").auxiliary_loss().item() == 0.0


def test_side_features_enter_item_embeddings() -> None:
    features = torch.zeros(N_ITEMS + 1, 3)
    features[1, 0] = features[2, 0] = features[2, 2] = features[0, 1] = 1.0
    config = _config(n_side_features=3)
    torch.manual_seed(0)
    model = DeepSeekRec(config, item_features=features)
    assert model.item_features[0].sum() == 0, "padding row is forced to zero"
    plain = model.item_embedding(torch.tensor([1, 2, 3]))
    embedded = model.encode_items(torch.tensor([1, 2, 3]))
    projection = model.side_projection.weight  # [D, G]
    torch.testing.assert_close(embedded[0], plain[0] + projection[:, 0])
    torch.testing.assert_close(embedded[1], plain[1] + (projection[:, 0] + projection[:, 2]) / 2)
    torch.testing.assert_close(embedded[2], plain[2])
    restored = DeepSeekRec(config)  # zeros, filled from the checkpoint
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.item_features, model.item_features)
    with pytest.raises(ValueError, match="shape"):
        DeepSeekRec(config, item_features=torch.zeros(N_ITEMS, 3))
    with pytest.raises(ValueError, match="n_side_features"):
        DeepSeekRec(_config(), item_features=features)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dim": 0}, "dim"),
        ({"n_routed_experts": 6, "n_expert_groups": 4}, "divisible"),
        ({"n_routed_experts": 4, "n_expert_groups": 4}, "per group"),
        ({"n_routed_experts": 8, "n_expert_groups": 2, "topk_groups": 3}, "topk_groups"),
        ({"top_k": 5}, "top_k"),
        ({"n_dense_layers": 3}, "n_dense_layers"),
        ({"qk_rope_head_dim": 3}, "even"),
        ({"dropout": 1.0}, "dropout"),
        ({"hidden_dropout": -0.1}, "hidden_dropout"),
        ({"similarity": "l2"}, "similarity"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation"),
        ({"experts_implementation": "fast"}, "experts_implementation"),
        ({"bias_update_speed": -1.0}, "bias_update_speed"),
        ({"q_lora_rank": 0}, "q_lora_rank"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_deepcopy_and_pickle_keep_their_own_routing_statistics() -> None:
    model = make_model("deepseek").eval()
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        model(left_pad([[1, 2, 3]], 3))
        clone(left_pad([[4, 5, 6, 7, 8, 9]], 6))
    assert model.expert_load() != {} and clone.expert_load() != {}
    assert restored.expert_load() == {}, "the unpickled copy has seen no forward of its own"
    slots = [round(share * 6 * 2) for share in clone.expert_load()["layer0"]]
    assert sum(slots) == 12, "the clone counted its own 6 tokens, not the original's 3"


def test_balance_loss_is_available_without_gradients() -> None:
    model = make_model("deepseek", balance_loss_alpha=0.5).eval()
    with torch.no_grad():
        model(left_pad([[1, 2, 3], [4]], 4))
        assert model.auxiliary_loss().item() > 0


def test_hidden_dropout_drops_sublayer_outputs_in_training_only() -> None:
    ids = left_pad([[1, 2, 3, 4], [5, 6]], 4)
    torch.manual_seed(0)
    plain = DeepSeekRec(_config(dropout=0.0))
    dropped = DeepSeekRec(_config(dropout=0.0, hidden_dropout=0.5))
    dropped.load_state_dict(plain.state_dict())  # same parameter names: the hooks add none
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(ids), plain.eval()(ids))
        plain.train(), dropped.train()
        torch.testing.assert_close(plain(ids), plain(ids))  # nothing random without hidden dropout
        assert not torch.allclose(dropped(ids), plain(ids))
    restored = pickle.loads(pickle.dumps(dropped))
    assert not torch.allclose(restored.train()(ids), restored.eval()(ids))


# -- relative attention biases go to transformers as a prepared 4D float mask, used as-is ------------
def _backbone_out(model: DeepSeekRec, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = ids != 0
    with torch.no_grad():
        return model.backbone(inputs_embeds=model.encode_items(ids), attention_mask=attention_mask,
                              position_ids=positions_from_mask(mask, start=0), use_cache=False).last_hidden_state


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_zero_bias_float_mask_equals_the_boolean_mask(attn: str) -> None:
    plain = make_model("deepseek", attn_implementation=attn).eval()
    biased = make_model("deepseek", attn_implementation=attn, relative_position_bias=True).eval()
    with torch.no_grad():
        biased.attention_bias.position.zero_()
    ids = left_pad([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9], []], 8)
    with torch.no_grad():
        torch.testing.assert_close(biased(ids), plain(ids), atol=1e-5, rtol=0)
        mask = biased._attention_mask(ids != 0, torch.float32, torch.zeros(1, 2, 8, 8))
    assert mask.shape == (3, 2, 8, 8) and mask.dtype == torch.float32


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_huge_negative_bias_on_one_key_equals_masking_that_key(attn: str) -> None:
    model = make_model("deepseek", attn_implementation=attn).eval()
    ids = left_pad([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9]], 8)
    mask, key = ids != 0, 5
    allowed = attention_allowed(mask)  # [B, 1, L, L]
    others = torch.arange(8) != key  # queries other than the key itself (a query always sees itself)
    bias = torch.zeros(1, 2, 8, 8)
    bias[0, :, others, key] = -1e9
    without_key = allowed.clone()
    without_key[:, :, others, key] = False
    reference = without_key if attn == "sdpa" else model._attention_mask(mask, torch.float32).masked_fill(
        ~without_key, torch.finfo(torch.float32).min)
    torch.testing.assert_close(_backbone_out(model, ids, model._attention_mask(mask, torch.float32, bias)),
                               _backbone_out(model, ids, reference), atol=1e-5, rtol=0)
    # and a per-head bias reaches each head: biasing one head only changes the output
    one_head = torch.zeros(1, 2, 8, 8)
    one_head[0, 1] = torch.randn(8, 8)
    assert not torch.allclose(_backbone_out(model, ids, model._attention_mask(mask, torch.float32, one_head)),
                              _backbone_out(model, ids, model._attention_mask(mask, torch.float32)), atol=1e-4)


def test_sdpa_and_eager_agree_with_every_context_input() -> None:
    ids, context = with_context([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9]], 8)
    outs = [make_model("deepseek", attn_implementation=attn, **ALL_FLAGS).eval()(ids, context).detach()
            for attn in ("sdpa", "eager")]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
