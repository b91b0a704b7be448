"""INT8 dynamic quantization of the user encoder, against the fp32 model it came from (every model family)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seekrec.models.quantization import quantize_encoder

from .helpers import ALL_FLAGS, MAX_LEN, MODEL_NAMES, N_ITEMS, left_pad, make_model, with_context

ROWS = [[(7 * i + 3 * j) % N_ITEMS + 1 for j in range(2 + i % (MAX_LEN - 1))] for i in range(24)]  # 24 histories


def _quantized_pair(name: str, **overrides: object) -> tuple[nn.Module, nn.Module, list[str]]:
    reference = make_model(name, dropout=0.0, **overrides).eval()
    model = make_model(name, dropout=0.0, **overrides).eval()
    return reference, model, quantize_encoder(model)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_int8_encoder_stays_close_to_fp32(name: str) -> None:
    reference, model, quantized = _quantized_pair(name)
    ids = left_pad(ROWS, MAX_LEN)  # [B=24, L]
    with torch.inference_mode():
        users, users_int8 = reference.encode_users(ids), model.encode_users(ids)  # [B, D]
        scores, scores_int8 = reference.score_all(ids)[:, 1:], model.score_all(ids)[:, 1:]  # [B, N]
    assert quantized and not torch.equal(users, users_int8)  # int8 really ran
    assert F.cosine_similarity(users, users_int8).min() > 0.99
    top, top_int8 = scores.topk(5).indices, scores_int8.topk(5).indices
    overlap = sum(len(set(a) & set(b)) for a, b in zip(top.tolist(), top_int8.tolist())) / top.numel()
    assert overlap > 0.8, f"top-5 overlap fp32 vs int8 {overlap:.2f}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_item_side_and_routing_stay_fp32(name: str) -> None:
    """Item vectors (the side-feature projection included) are untouched; for DeepSeek-rec the MLA projections and
    shared experts are int8, the routers and routed experts (not nn.Linear) fp32."""
    reference, model, quantized = _quantized_pair(name, n_side_features=3)
    ids = torch.arange(N_ITEMS + 1)
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_items(ids), reference.encode_items(ids), rtol=0, atol=0)
    assert isinstance(model.side_projection, nn.Linear) and "side_projection" not in quantized
    if name == "sasrec":
        assert quantized == sorted(f"blocks.{i}.{p}" for i in range(2) for p in ("attn.qkv", "attn.out", "ffn.fc1", "ffn.fc2"))
    else:
        layer = model.backbone.layers[0]
        assert "backbone.layers.0.self_attn.kv_b_proj" in quantized
        assert "backbone.layers.0.mlp.shared_experts.down_proj" in quantized
        assert not any(".gate" in n and "gate_proj" not in n for n in quantized)
        assert layer.mlp.gate.weight.dtype == torch.float32 and layer.mlp.experts.gate_up_proj.dtype == torch.float32


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_int8_encoder_with_event_time_inputs(name: str) -> None:
    reference, model, _ = _quantized_pair(name, **ALL_FLAGS)
    ids, context = with_context(ROWS[:8], MAX_LEN)
    with torch.inference_mode():
        users, users_int8 = reference.encode_users(ids, context), model.encode_users(ids, context)
    assert F.cosine_similarity(users, users_int8).min() > 0.99


def test_refuses_a_model_off_the_cpu() -> None:
    model = make_model("sasrec").to("meta")
    with pytest.raises(ValueError, match="CPU only; the model is on meta"):
        quantize_encoder(model)
