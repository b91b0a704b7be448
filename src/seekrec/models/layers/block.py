"""A transformer block for causal sequence models: self-attention + point-wise FFN with residuals."""

from __future__ import annotations

from torch import Tensor, nn

from seekrec.models.layers.attention import CausalSelfAttention
from seekrec.models.layers.feedforward import PointwiseFeedForward
from seekrec.models.layers.norms import build_norm


class TransformerBlock(nn.Module):
    """``x [B, L, D], mask [B, L] -> [B, L, D]``.

    ``norm_first=True`` is the pre-norm block (``x + f(norm(x))``), stable for deeper stacks;
    ``False`` is the post-norm block of the original Transformer (``norm(x + f(x))``). Both are the
    two variants of the pmixer SASRec reimplementation. Padded positions are zeroed on the way out,
    as the original SASRec does with its timeline mask.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float,
        *,
        norm_first: bool = True,
        norm: str = "layernorm",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn_norm = build_norm(norm, dim, eps)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.ffn_norm = build_norm(norm, dim, eps)
        self.ffn = PointwiseFeedForward(dim, ffn_dim, dropout)

    def forward(self, x: Tensor, mask: Tensor, *, last_only: bool = False, bias: Tensor | None = None) -> Tensor:
        """``last_only``: the output at the last position only, ``[B, 1, D]`` (equal to ``[:, -1:]`` of
        the full output): a user encoding needs no other position from the final block. ``bias``
        ``[B or 1, H, L, L]``: added to the attention logits (see ``CausalSelfAttention``)."""
        residual, out_mask = (x[:, -1:], mask[:, -1:]) if last_only else (x, mask)
        if self.norm_first:
            h = residual + self.attn(self.attn_norm(x), mask, last_only=last_only, bias=bias)
            h = h + self.ffn(self.ffn_norm(h))
        else:
            h = self.attn_norm(residual + self.attn(x, mask, last_only=last_only, bias=bias))
            h = self.ffn_norm(h + self.ffn(h))
        return h * out_mask.unsqueeze(-1).to(h.dtype)
