"""Normalisation layers: LayerNorm (SASRec) and RMSNorm (DeepSeek / LLaMA family)."""

from __future__ import annotations

from torch import nn

NORM_KINDS = ("layernorm", "rmsnorm")


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """A ``[..., D] -> [..., D]`` norm; ``kind`` is one of ``NORM_KINDS`` (validated by configs)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm kind {kind!r}; use one of {NORM_KINDS}")
