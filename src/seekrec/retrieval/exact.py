"""Exact maximum-inner-product top-K in plain PyTorch: the reference every ANN index is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("dot", "cosine")


def check_metric(metric: str) -> None:
    """Raise ``ValueError`` for a metric other than ``dot`` / ``cosine`` (the model similarities)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS} (the model's similarity kind)")


def exact_topk(queries: Tensor, items: Tensor, k: int, metric: str = "dot") -> tuple[Tensor, Tensor]:
    """``queries [B, D], items [N, D] -> (scores [B, K], rows [B, K])``, best first.

    ``cosine`` compares L2-normalised vectors (the temperature of a cosine model only rescales
    scores, so it cannot change the ranking). ``K = min(k, N)``; rows index ``items``.
    """
    check_metric(metric)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if queries.dim() != 2 or items.dim() != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(f"expected queries [B, D] and items [N, D], got {tuple(queries.shape)} and {tuple(items.shape)}")
    queries, items = queries.float(), items.float()
    if metric == "cosine":
        queries, items = F.normalize(queries, dim=-1), F.normalize(items, dim=-1)
    scores = queries @ items.T  # [B, N]
    return torch.topk(scores, min(k, items.shape[0]), dim=1)
