from __future__ import annotations

import math

import torch

from seekrec.models.layers.attention import CausalSelfAttention
from seekrec.models.layers.block import TransformerBlock


def _reference(attn: CausalSelfAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention, one sequence at a time over its real items only."""
    batch, _, dim = x.shape
    heads, head_dim = attn.n_heads, dim // attn.n_heads
    out = torch.zeros_like(x)
    for b in range(batch):
        real = mask[b].nonzero().flatten()
        q, k, v = attn.qkv(x[b, real]).view(len(real), 3, heads, head_dim).permute(1, 2, 0, 3)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # [H, n, n]
        future = torch.ones(len(real), len(real), dtype=torch.bool).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(-1)
        out[b, real] = attn.out((weights @ v).transpose(0, 1).reshape(len(real), dim))
    return out


def test_matches_plain_reference_on_real_positions() -> None:
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4, dropout=0.0).eval()
    x = torch.randn(3, 7, 16)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7, [0] * 6 + [1]], dtype=torch.bool)
    got = attn(x, mask)
    torch.testing.assert_close(got[mask], _reference(attn, x, mask)[mask], atol=1e-5, rtol=1e-5)


def test_fully_padded_rows_are_finite_and_padding_content_is_ignored() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 32, 0.0).eval()
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)
    x = torch.randn(2, 4, 16)
    y = block(x, mask)
    assert torch.isfinite(y).all()
    assert (y[~mask] == 0).all()
    x_noisy = x.clone()
    x_noisy[~mask] = 1e4 * torch.randn_like(x_noisy[~mask])
    torch.testing.assert_close(block(x_noisy, mask)[mask], y[mask])
