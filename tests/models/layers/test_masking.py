from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.models.layers.masking import attention_allowed, padding_mask, positions_from_mask


def _cases(max_total: int, max_rows: int) -> st.SearchStrategy[tuple[int, list[int]]]:
    """(L, real lengths per row) with every length <= L."""
    return st.integers(1, max_total).flatmap(
        lambda total: st.tuples(st.just(total), st.lists(st.integers(0, total), min_size=1, max_size=max_rows))
    )


def _mask(lengths: list[int], total: int) -> torch.Tensor:
    idx = torch.arange(total)
    return idx[None, :] >= total - torch.tensor(lengths)[:, None]  # left padding


@settings(max_examples=50, deadline=None)
@given(_cases(12, 5))
def test_positions_count_from_first_real_item(case: tuple[int, list[int]]) -> None:
    total, lengths = case
    mask = _mask(lengths, total)
    for start in (0, 1):
        positions = positions_from_mask(mask, start=start)
        for row, n in enumerate(lengths):
            assert positions[row, total - n :].tolist() == list(range(start, start + n))
            assert (positions[row, : total - n] == 0).all()


@settings(max_examples=50, deadline=None)
@given(_cases(10, 4))
def test_attention_is_causal_ignores_padding_and_never_empty(case: tuple[int, list[int]]) -> None:
    total, lengths = case
    mask = _mask(lengths, total)
    allowed = attention_allowed(mask)[:, 0]  # [B, L, L]
    assert allowed.any(dim=-1).all(), "every query row must see at least one key"
    i = torch.arange(total)
    assert not (allowed & (i[None, None, :] > i[None, :, None])).any(), "no query sees the future"
    real_query_padded_key = mask[:, :, None] & ~mask[:, None, :]
    assert not (allowed & real_query_padded_key).any(), "real queries never see padding"
    expected_real = mask[:, :, None] & mask[:, None, :] & (i[None, None, :] <= i[None, :, None])
    assert torch.equal(allowed & mask[:, :, None], expected_real)


def test_padding_mask_marks_nonzero_ids() -> None:
    ids = torch.tensor([[0, 0, 3, 1], [2, 0, 0, 5]])
    assert padding_mask(ids).tolist() == [[False, False, True, True], [True, False, False, True]]
