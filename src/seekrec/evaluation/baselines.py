"""Non-neural baselines every model must beat: MostPop, ItemKNN (cosine) and EASE.

Each is fitted on a ``UserSequences`` and scores through the same ``Scorer`` protocol as the
neural models, so one evaluator serves all. Hyper-parameter grids are chosen on validation by
``evaluation.tuning``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from seekrec.data.splits import UserSequences
from seekrec.evaluation.ranking import EvalBatch


def interaction_matrix(seqs: UserSequences, n_items: int) -> sp.csr_matrix:
    """``[U + 1, N + 1]`` binary user-item matrix (repeats count once)."""
    users = seqs.user_of_event()
    data = np.ones(len(users), dtype=np.float32)
    mat = sp.csr_matrix((data, (users, seqs.items)), shape=(seqs.n_users + 1, n_items + 1))
    mat.data[:] = 1.0  # duplicates were summed
    return mat


def _multi_hot(history: torch.Tensor, n_items: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, H]`` left-padded ids -> ``[B, N + 1]`` multi-hot rows (padding column cleared)."""
    rows = torch.zeros(history.shape[0], n_items + 1, dtype=dtype, device=history.device)
    rows.scatter_(1, history, 1.0)
    rows[:, 0] = 0.0
    return rows


@dataclass
class MostPop:
    """Scores every item by its number of distinct users in the fit data."""

    grid: ClassVar[dict[str, list]] = {}

    def fit(self, seqs: UserSequences, n_items: int) -> MostPop:
        counts = np.asarray(interaction_matrix(seqs, n_items).sum(axis=0)).ravel()
        self.popularity = torch.from_numpy(counts.astype(np.float32))
        return self

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.popularity.to(batch.users.device).expand(len(batch.users), -1).clone()


@dataclass
class ItemKNN:
    """Item-based kNN with cosine similarity, keeping the ``k_neighbors`` most similar items.

    Similarities are computed in column blocks so memory stays ``O(N * block)`` rather than
    ``O(N^2)`` for large catalogs.
    """

    k_neighbors: int = 100
    shrink: float = 0.0
    block: int = 2048
    grid: ClassVar[dict[str, list]] = {"k_neighbors": [20, 50, 100, 200, 500]}

    def __post_init__(self) -> None:
        if self.k_neighbors < 1 or self.shrink < 0:
            raise ValueError("k_neighbors must be >= 1 and shrink >= 0")

    def fit(self, seqs: UserSequences, n_items: int) -> ItemKNN:
        x = interaction_matrix(seqs, n_items).tocsc()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xt = x.T.tocsr()
        k = min(self.k_neighbors, n_items)
        rows, cols, vals = [], [], []
        for lo in range(0, n_items + 1, self.block):
            hi = min(lo + self.block, n_items + 1)
            co = torch.from_numpy((xt @ x[:, lo:hi]).toarray())  # [N + 1, b] co-occurrence counts
            denom = torch.from_numpy(np.outer(norms, norms[lo:hi]) + self.shrink + 1e-12)
            sim = (co / denom).float()
            sim[lo + torch.arange(hi - lo), torch.arange(hi - lo)] = 0.0  # no self-similarity
            top = torch.topk(sim, k, dim=0)  # strongest neighbours of each item in the block
            rows.append(top.indices.numpy().ravel())
            cols.append(np.tile(np.arange(lo, hi), k))
            vals.append(top.values.numpy().ravel())
        sim_sparse = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items + 1, n_items + 1)
        )
        sim_sparse.eliminate_zeros()
        self.similarity_t = sim_sparse.T.tocsr()  # row j holds the neighbours i of target item j
        self.n_items = n_items
        return self

    def score(self, batch: EvalBatch) -> torch.Tensor:
        hot = _multi_hot(batch.history.cpu(), self.n_items, torch.float32).numpy()
        scores = (self.similarity_t @ hot.T).T  # [B, N + 1] = ([N + 1, N + 1] @ [N + 1, B]).T
        return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)).to(batch.users.device)


@dataclass
class EASE:
    """Embarrassingly Shallow Autoencoder (Steck, 2019): a closed-form item-item model.

    ``B = I - P diagMat(1 / diag(P))`` with ``P = (X^T X + l2 I)^-1``, diagonal forced to zero.
    Needs an ``(N + 1)^2`` dense matrix: about 1 GB in float64 at 11k items.
    """

    l2: float = 100.0
    dtype: torch.dtype = torch.float64
    grid: ClassVar[dict[str, list]] = {"l2": [10.0, 50.0, 100.0, 200.0, 500.0, 1000.0]}

    def __post_init__(self) -> None:
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")

    def fit(self, seqs: UserSequences, n_items: int) -> EASE:
        x = interaction_matrix(seqs, n_items)
        gram = torch.from_numpy((x.T @ x).toarray()).to(self.dtype)
        gram.diagonal().add_(self.l2)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(gram))
        weights = -precision / precision.diagonal()
        weights.fill_diagonal_(0.0)
        self.weights = weights
        self.n_items = n_items
        return self

    def score(self, batch: EvalBatch) -> torch.Tensor:
        hot = _multi_hot(batch.history.cpu(), self.n_items, self.dtype)
        return (hot @ self.weights).float().to(batch.users.device)


BASELINES: dict[str, type] = {"pop": MostPop, "itemknn": ItemKNN, "ease": EASE}
