"""Item-id embedding (padding_idx 0) plus a learned positional embedding, as in SASRec."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seekrec.models.layers.masking import padding_mask, positions_from_mask


class SequenceEmbedding(nn.Module):
    """``input_ids [B, L] -> [B, L, D]``: scaled item embedding + position embedding, then dropout.

    The item table ``item_table [N + 1, D]`` is shared with the output side, as in the original
    SASRec. Positions count from the first real item (``positions_from_mask(start=1)``), padding
    uses row 0 of the positional table, which is kept at zero (``padding_idx``).
    """

    def __init__(self, n_items: int, dim: int, max_len: int, dropout: float, *, scale: bool = True) -> None:
        super().__init__()
        self.item_table = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.position_table = nn.Embedding(max_len + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.max_len = max_len
        self.scale = math.sqrt(dim) if scale else 1.0

    def forward(self, input_ids: Tensor, extra: Tensor | None = None, items: Tensor | None = None) -> Tensor:
        """``extra [B, L, D]`` (e.g. event-time features) is summed in before dropout. ``items [B, L, D]``
        replaces ``item_table(input_ids)`` as the item representation (e.g. with side features added); it
        is scaled like the table rows, and must be zero at padding."""
        if input_ids.shape[-1] > self.max_len:
            raise ValueError(
                f"sequence length {input_ids.shape[-1]} exceeds max_len={self.max_len}; "
                "truncate the input or raise max_len in the model config"
            )
        positions = positions_from_mask(padding_mask(input_ids), start=1)  # [B, L], 0 at padding
        if items is None:
            items = self.item_table(input_ids)
        x = items * self.scale + self.position_table(positions)
        if extra is not None:
            x = x + extra
        return self.dropout(x)


def grow_embedding(table: nn.Embedding, n_rows: int) -> nn.Embedding:
    """A copy of ``table`` with ``n_rows`` rows; existing rows kept, new rows drawn with the
    existing rows' standard deviation so new items start on the same scale as trained ones."""
    old = table.weight.detach()
    if n_rows < old.shape[0]:
        raise ValueError(f"cannot shrink an item table from {old.shape[0]} to {n_rows} rows")
    grown = nn.Embedding(n_rows, old.shape[1], padding_idx=table.padding_idx, device=old.device, dtype=old.dtype)
    with torch.no_grad():
        std = old[1:].std().clamp_min(1e-4) if old.shape[0] > 2 else torch.tensor(0.02)
        grown.weight.normal_(0.0, float(std))
        grown.weight[: old.shape[0]] = old
        if table.padding_idx is not None:
            grown.weight[table.padding_idx].zero_()
    return grown
