"""Log-bucketing, action buckets, the context checks and the attention-bias building blocks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from seekrec.models.layers.context import (
    ContextEmbedding,
    RelativeAttentionBias,
    SequenceContext,
    action_bucket,
    additive_mask,
    log_bucket,
    require_context,
)
from seekrec.models.layers.masking import attention_allowed
from seekrec.models.sasrec import SASRecConfig


def test_log_bucket_values() -> None:
    gaps = torch.tensor([-5, 0, 1, 2, 3, 4, 7, 8, 1023, 1024, 86_400, 2**40])
    assert log_bucket(gaps, 32).tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 10, 11, 17, 31]
    assert log_bucket(gaps, 5).tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 4, 4, 4, 4]


@given(st.integers(min_value=1, max_value=2**52), st.integers(min_value=2, max_value=64))
def test_log_bucket_is_one_plus_floor_log2(gap: int, n_buckets: int) -> None:
    assert log_bucket(torch.tensor([gap]), n_buckets).item() == min(n_buckets - 1, gap.bit_length())


def test_action_bucket_rounds_and_clips() -> None:
    values = torch.tensor([-1.0, 0.0, 0.4, 0.6, 2.5, 4.0, 10.7, 99.0, float("nan")])
    assert action_bucket(values, 11).tolist() == [0, 0, 0, 1, 2, 4, 10, 10, 0]


def test_context_checks_name_the_flags_and_shapes() -> None:
    ids = torch.ones(2, 4, dtype=torch.long)
    plain = SASRecConfig(n_items=5)
    assert require_context(plain, ids, None) is None and not plain.needs_context
    timed = SASRecConfig(n_items=5, time_features=True, relative_time_bias=True)
    with pytest.raises(ValueError, match="time_features, relative_time_bias"):
        require_context(timed, ids, None)
    with pytest.raises(ValueError, match=r"times has shape \[2, 3\]"):
        require_context(timed, ids, SequenceContext(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4)))
    acting = SASRecConfig(n_items=5, action_features=True)
    with pytest.raises(ValueError, match="no values"):
        require_context(acting, ids, SequenceContext(torch.zeros(2, 4), torch.zeros(2, 4)))
    assert not SASRecConfig(n_items=5, relative_position_bias=True).needs_context


@pytest.mark.parametrize("field, value", [("n_time_buckets", 1), ("n_action_buckets", 0), ("time_features", 1)])
def test_config_fields_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SASRecConfig.{field}"):
        SASRecConfig(n_items=5, **{field: value})


def test_first_event_and_padding_get_the_none_bucket_and_embeddings_are_zero_at_padding() -> None:
    layer = ContextEmbedding(4, time_features=True, action_features=False, n_time_buckets=8, n_action_buckets=3)
    mask = torch.tensor([[False, True, True, True]])
    context = SequenceContext(torch.tensor([[0, 100, 100, 104]]), torch.tensor([[0, 100, 104, 200]]))
    out = layer(mask, context)
    assert (out[0, 0] == 0).all()
    none = layer.n_time_buckets
    expected = layer.previous_gap.weight[[none, 0, 3]] + layer.query_gap.weight[[0, 3, 7]]
    torch.testing.assert_close(out[0, 1:], expected)


def test_relative_bias_reads_positions_and_log_time_gaps() -> None:
    layer = RelativeAttentionBias(2, 8, 6, position=True, time=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    context = SequenceContext(torch.tensor([[10, 11, 14]]), torch.zeros(1, 3, dtype=torch.long))
    bias = layer(mask, context)  # [1, H, L, L]
    assert bias.shape == (1, 2, 3, 3)
    # query 2, key 0: relative position 2, |14 - 10| = 4 -> bucket 3
    torch.testing.assert_close(bias[0, :, 2, 0], layer.position[:, 2] + layer.time[:, 3])


def test_additive_mask_is_the_bias_where_allowed_and_finfo_min_elsewhere() -> None:
    mask = torch.tensor([[False, True, True]])
    allowed = attention_allowed(mask)
    bias = torch.randn(1, 2, 3, 3)
    out = additive_mask(allowed, bias, torch.float32)
    assert out.shape == (1, 2, 3, 3)
    expanded = allowed.expand(1, 2, 3, 3)
    assert torch.equal(out[expanded], bias[expanded])
    assert (out[~expanded] == torch.finfo(torch.float32).min).all()
