"""User-item similarity: dot product, or cosine divided by a temperature (HSTU protocol).

Models own one ``Similarity`` so losses and ``score_all`` always score the same way.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

SIMILARITY_KINDS = ("dot", "cosine")


class Similarity(nn.Module):
    """Scores hidden states ``h [..., D]`` against item embeddings ``e``.

    ``dot`` is the raw inner product (``temperature`` unused); ``cosine`` is the cosine of the angle
    divided by ``temperature``, which bounds logits and is the HSTU evaluation protocol's choice.
    """

    def __init__(self, kind: str, temperature: float) -> None:
        super().__init__()
        if kind not in SIMILARITY_KINDS:
            raise ValueError(f"unknown similarity {kind!r}; use one of {SIMILARITY_KINDS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kind = kind
        self.temperature = temperature

    def _prepare(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if self.kind == "cosine" else x

    def _scale(self, scores: Tensor) -> Tensor:
        return scores / self.temperature if self.kind == "cosine" else scores

    def pairwise(self, h: Tensor, e: Tensor) -> Tensor:
        """``h [..., D], e [..., D] -> [...]``: one score per (hidden, item) pair."""
        return self._scale((self._prepare(h) * self._prepare(e)).sum(dim=-1))

    def matrix(self, h: Tensor, e: Tensor) -> Tensor:
        """``h [..., D], e [S, D] -> [..., S]``: every hidden state against every item in ``e``."""
        return self._scale(self._prepare(h) @ self._prepare(e).T)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, temperature={self.temperature}"
