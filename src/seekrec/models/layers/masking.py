"""Masks and positions for left-padded item sequences (id 0 = padding, real items at the end).

Every model derives padding, attention and position information from these three functions so that
"more left padding" can never change what a real position sees.
"""

from __future__ import annotations

import torch
from torch import Tensor

PADDING_ID = 0


def padding_mask(input_ids: Tensor) -> Tensor:
    """``[B, L]`` bool, True at real items (id != 0)."""
    return input_ids != PADDING_ID


def positions_from_mask(mask: Tensor, start: int = 0) -> Tensor:
    """Positions counted from each sequence's first real item: ``[B, L]`` long.

    Real items get ``start, start + 1, ...``; padded slots get ``max(start - 1, 0)``. With ``start=1``
    padding lands on index 0 (a padding row of a positional table); with ``start=0`` this is the
    ``cumsum(mask) - 1`` clamped at 0 that Hugging Face generation uses for left padding. Counting
    from the first real item (not from the window start) makes positions independent of how much
    padding precedes the sequence.
    """
    positions = mask.long().cumsum(dim=-1) - 1 + start  # [B, L]
    return torch.where(mask, positions, torch.zeros_like(positions)).clamp(min=0)


def attention_allowed(mask: Tensor) -> Tensor:
    """Causal + key-padding attention pattern: ``[B, 1, L, L]`` bool, True where query i may see key j.

    Real queries see real keys at or before them. A padded query would see no key at all, and a fully
    masked softmax row is NaN on some SDPA backends; a NaN value vector then poisons real queries
    (0 * NaN = NaN in the weighted sum). So every query may also see itself: harmless for real
    queries (already allowed) and keeps padded rows finite.
    """
    length = mask.shape[-1]
    idx = torch.arange(length, device=mask.device)
    causal = idx[None, :] <= idx[:, None]  # [L, L], query i (row) sees key j <= i
    allowed = causal[None] & mask[:, None, :]  # [B, L, L]
    allowed = allowed | (idx[None, :] == idx[:, None])[None]
    return allowed[:, None]  # [B, 1, L, L]
