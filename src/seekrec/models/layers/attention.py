"""Causal multi-head self-attention over left-padded sequences, via PyTorch SDPA."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.models.layers.context import additive_mask
from seekrec.models.layers.masking import attention_allowed


class CausalSelfAttention(nn.Module):
    """``x [B, L, D], mask [B, L] -> [B, L, D]``; query i attends to real keys j <= i.

    ``mask`` is True at real items. Padded queries attend only to themselves (see
    ``attention_allowed``) so no row is fully masked and nothing becomes NaN.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor, *, last_only: bool = False, bias: Tensor | None = None) -> Tensor:
        """``last_only``: only the last query position, ``[B, 1, D]``; what inference needs from the
        final block (keys and values still cover every position). ``bias [B or 1, H, L, L]``: added to
        the attention logits where attention is allowed (relative position / time biases)."""
        batch, length, dim = x.shape
        head_dim = dim // self.n_heads
        # [B, L, 3D] -> 3 x [B, H, L, D/H]
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, head_dim).permute(2, 0, 3, 1, 4)
        allowed = attention_allowed(mask)  # [B, 1, L, L] broadcast over heads
        if bias is not None:
            allowed = additive_mask(allowed, bias, q.dtype)  # [B, H, L, L] float
        if last_only:
            q, allowed, length = q[:, :, -1:], allowed[:, :, -1:], 1
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))
