"""``CandidateScorer``: the server's ranking (ANN candidates, then exact scores) as an evaluator scorer.

Full-ranking evaluation scores every item exactly; the server scores only the candidates its ANN index
returns, exactly, with the model's similarity. Evaluating through the same two steps measures what an
approximate index (HNSW, int8 codes) costs in NDCG and recall, against ``ModelScorer`` on the same model.
"""

from __future__ import annotations

from typing import Protocol

import torch

from seekrec.evaluation.ranking import EvalBatch, ModelScorer


class CandidateSearch(Protocol):
    """An ANN index over item ids (``seekrec.retrieval.index.ItemIndex``): ``[B, D] -> (scores, ids [B, K])``,
    id -1 where it found none."""

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class CandidateScorer(ModelScorer):
    """Exact model scores for each user's ``candidates`` items from ``index`` (plus as many as the user has
    history items, which the evaluator masks, as the server widens its search for the seen filter); every
    other item scores ``-inf``, so a target the index misses ranks last."""

    def __init__(self, model: torch.nn.Module, max_len: int, index: CandidateSearch, candidates: int) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        super().__init__(model, max_len)
        self.index, self.candidates = index, candidates
        self._items: torch.Tensor | None = None  # [N + 1, D], encoded once

    def score(self, batch: EvalBatch) -> torch.Tensor:
        users = self.model.encode_users(*self.inputs(batch))  # [B, D]
        if self._items is None:
            self._items = self.model.encode_items(torch.arange(self.model.n_items + 1, device=users.device))
        seen = int((batch.history > 0).sum(dim=1).max())
        _, cand = self.index.search(users, self.candidates + seen)  # [B, C]
        cand = cand.to(users.device)
        exact = self.model.similarity.pairwise(users.unsqueeze(1), self._items[cand.clamp(min=0)])  # [B, C]
        exact = exact.float().masked_fill(cand < 0, float("-inf"))
        scores = torch.full((users.shape[0], self._items.shape[0]), float("-inf"), device=users.device)
        return scores.scatter_(1, cand.clamp(min=0), exact)  # [B, N + 1]; a missing slot lands on padding
