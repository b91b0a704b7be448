"""A multi-layer perceptron with a configurable activation, for the feature-based models' towers and heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATION_KINDS = ("relu", "prelu")


class PReLU(nn.Module):
    """``[..., D] -> [..., D]``: ``x`` if positive else ``slope * x``, one learned slope per feature.

    ``nn.PReLU`` puts channels on dim 1; feature-model activations are ``[B, C, L, D]``, channels last.
    """

    def __init__(self, dim: int, init: float = 0.25) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(min=0) + self.slope * x.clamp(max=0)


def build_activation(kind: str, dim: int) -> nn.Module:
    """``[..., D] -> [..., D]``; "prelu" learns one negative slope per feature (DIN's choice over ReLU)."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "prelu":
        return PReLU(dim)
    raise ValueError(f"unknown activation {kind!r}; use one of {ACTIVATION_KINDS}")


class MLP(nn.Module):
    """``[..., I] -> [..., O]``: (Linear -> activation -> dropout) per hidden width, then a final Linear.

    ``hidden_dims=()`` is a single Linear. The output layer has no activation so callers decide
    (normalise an embedding, read a logit).
    """

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], out_dim: int, *, activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), build_activation(activation, hidden), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
