"""Position-wise feed-forward network (the SASRec "point-wise FFN", a kernel-1 conv == Linear)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PointwiseFeedForward(nn.Module):
    """``[..., D] -> [..., D]``: Linear -> ReLU -> dropout -> Linear -> dropout, no residual.

    The residual and norm belong to the enclosing block so pre- and post-norm share this module.
    """

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))
