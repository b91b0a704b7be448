"""The stages as small functions over ``[B, C]`` tensors of item ids: retrieval, ranking, re-ranking.

Every function works on a whole micro-batch at once. Ids are dataset item ids ``1..N'`` (``N'``
counts items added after training too); 0 marks an empty slot, whose score is ``-inf``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from seekrec.features.batch import FeatureBatch
from seekrec.models.calibration import Calibrator
from seekrec.models.din import DIN
from seekrec.models.two_tower import TwoTower
from seekrec.pipeline.features import ItemView
from seekrec.pipeline.stage_config import StageConfig
from seekrec.retrieval.index import ItemIndex


def seen_mask(seen: Sequence[Sequence[int] | np.ndarray], n_ids: int) -> Tensor:
    """``[B, n_ids + 1]`` bool, True at the items each user has seen (ids outside ``1..n_ids`` ignored)."""
    mask = torch.zeros(len(seen), n_ids + 1, dtype=torch.bool)
    for row, items in enumerate(seen):
        ids = np.asarray(items, dtype=np.int64).ravel()
        ids = ids[(ids >= 1) & (ids <= n_ids)]
        mask[row, torch.from_numpy(ids)] = True
    return mask


def first_occurrence(ids: Tensor) -> Tensor:
    """``[B, C]`` bool: True where an id appears for the first time in its row (de-duplication)."""
    sorted_ids, order = ids.sort(dim=1, stable=True)  # equal ids keep their left-to-right order
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    return ~torch.zeros_like(repeat).scatter(1, order, repeat)


def compact(ids: Tensor, scores: Tensor, keep: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The kept entries of each row, in order, in ``[B, width]`` (padded with id 0 / score -inf)."""
    if ids.shape[1] < width:
        pad = width - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, pad))
        scores = torch.nn.functional.pad(scores, (0, pad), value=-torch.inf)
        keep = torch.nn.functional.pad(keep, (0, pad))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    kept = keep.gather(1, order)
    return ids.gather(1, order).masked_fill(~kept, 0), scores.gather(1, order).masked_fill(~kept, -torch.inf)


def retrieve(index: ItemIndex, queries: Tensor, exclude: Tensor, n_candidates: int) -> tuple[Tensor, Tensor]:
    """Top ``n_candidates`` ids per query that ``exclude [B, N' + 1]`` does not mark, best first.

    Asks the index for as many more items as the most-excluding row needs, so every row still gets
    ``n_candidates`` when the catalog has them. Returns ``ids [B, R]`` and inner products ``[B, R]``.
    """
    extra = int(exclude.sum(dim=1).max()) if len(exclude) else 0
    scores, ids = index.search(queries, min(len(index), n_candidates + extra))  # [B, K'], -1 = unfilled
    valid = ids > 0
    safe = ids.clamp(min=0).clamp(max=exclude.shape[1] - 1)
    keep = valid & ~exclude.gather(1, safe) & first_occurrence(ids)
    return compact(ids, scores, keep, n_candidates)


class Retriever(Protocol):
    """A retrieval stage: user rows -> query vectors, searched in the index it names.

    ``catalog`` is the pipeline's index over ids ``1..N'`` (added items included); a retriever with
    its own item table answers with that instead, and then cannot retrieve added items."""

    retrieves_added_items: bool

    @property
    def logit_scale(self) -> float: ...

    def encode_users(self, user: FeatureBatch) -> Tensor: ...

    def search_index(self, catalog: ItemIndex) -> ItemIndex: ...


class TwoTowerRetriever:
    """The two-tower's towers as a retrieval stage: user vectors, item vectors of full item rows."""

    retrieves_added_items = True  # the item tower embeds any item from its content

    def __init__(self, model: TwoTower, view: ItemView) -> None:
        self.model, self.view = model.eval(), view
        self.metric = "dot"

    @property
    def logit_scale(self) -> float:
        """Index scores (inner products of unit vectors) times this are the model's logits."""
        return float(1.0 / self.model.temperature)

    def encode_users(self, user: FeatureBatch) -> Tensor:
        """``B`` user rows -> ``[B, D]``."""
        return self.model.encode_users(user)

    def item_vectors(self, items: FeatureBatch) -> Tensor:
        """Full item rows (spec columns + ``item_id``; 0 for an item the model never saw) -> ``[M, D]``."""
        return self.model.encode_catalog(self.view.select(items))

    def search_index(self, catalog: ItemIndex) -> ItemIndex:
        """The catalog's index holds this model's item vectors."""
        return catalog


class SequenceRetriever:
    """A next-item model (SASRec) as a retrieval stage: the user's last ``max_len`` items (the user
    rows' behaviour sequence) against the model's item table ``1..N``, indexed once here."""

    retrieves_added_items = False  # no item-table row for an item without interactions

    def __init__(self, model: torch.nn.Module, max_len: int) -> None:
        if getattr(getattr(model, "config", None), "needs_context", False):
            raise ValueError(f"{type(model).__name__} uses event-time/action inputs, but the pipeline's user rows "
                             "keep item ids only: use a sequence retriever trained without them")
        self.model, self.max_len = model.eval(), max_len
        self.metric = model.similarity.kind
        self.n_items = int(model.n_items)
        ids = torch.arange(1, self.n_items + 1)
        with torch.inference_mode():
            self.index = ItemIndex(self.model.encode_items(ids), ids=ids.numpy(), metric=self.metric)

    @property
    def logit_scale(self) -> float:
        """Index scores (dot products, or cosines) times this are the model's logits."""
        return 1.0 / self.model.similarity.temperature if self.metric == "cosine" else 1.0

    def encode_users(self, user: FeatureBatch) -> Tensor:
        if user.sequence is None:
            raise ValueError("the sequence retriever reads the user rows' behaviour sequence; the batch has none")
        return self.model.encode_users(user.sequence[:, -self.max_len:])

    def search_index(self, catalog: ItemIndex) -> ItemIndex:
        """Its own item table's index: the catalog's holds two-tower vectors."""
        return self.index


class Ranker:
    """DIN logits turned into calibrated log-odds of a click (``sigmoid`` gives the probability)."""

    def __init__(self, model: DIN, calibrator: Calibrator) -> None:
        self.model, self.calibrator = model.eval(), calibrator

    def logits(self, user: FeatureBatch, items: FeatureBatch) -> Tensor:
        """``user`` (B rows), ``items`` (``B * C`` full item rows, user b's at ``b * C ..``) -> ``[B, C]``."""
        return self.calibrator.calibrated_logits(self.model.score_candidates(user, items).float())


def genre_matrix(column: Tensor, cardinality: int) -> Tensor:
    """``[N' + 1, M]`` genre ids (0 = padding) -> ``[N' + 1, G]`` float multi-hot (column 0 cleared)."""
    hot = torch.zeros(column.shape[0], cardinality)
    hot.scatter_(1, column.long(), 1.0)
    hot[:, 0] = 0.0
    return hot


def rerank(ids: Tensor, scores: Tensor, k: int, config: StageConfig, *, values: Tensor | None = None,
           exclude: Tensor | None = None, genres: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``ids [B, C]`` scored ``[B, C]`` (in [0, 1] for MMR) -> the final ``[B, K]`` ids and their
    ``values [B, C]`` (default: the scores), -inf at empty slots.

    Best score first; empty slots, ids in ``exclude [B, N' + 1]`` and repeats of an id (the best-scored
    copy stays) are dropped; then ``config.diversity`` decides which items fill the K slots (``genres
    [N' + 1, G]`` multi-hot). A row can come back shorter than K when a genre cap leaves too few.
    """
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ids, scores = ids.gather(1, order), scores.gather(1, order)
    values = scores if values is None else values.gather(1, order)
    keep = (ids > 0) & first_occurrence(ids)
    if exclude is not None:
        keep &= ~exclude.gather(1, ids.clamp(max=exclude.shape[1] - 1))
    if config.diversity == "none":
        chosen, _ = compact(ids, scores, keep, k)
    elif genres is None:
        raise ValueError(f"stages.diversity={config.diversity!r} needs item genres: the catalog has no "
                         f"column {config.genre_column!r}; set stages.genre_column or diversity='none'")
    elif config.diversity == "max_per_genre":
        chosen, _ = compact(ids, scores, keep & genre_cap(genres[ids], keep, k, config.max_per_genre), k)
    else:
        chosen, _ = mmr(ids, scores, keep, genres[ids], k, config.mmr_lambda)
    # each chosen id's value: its first (best-scored) copy in the sorted row
    position = (ids[:, None, :] == chosen[:, :, None]).int().argmax(dim=2)  # [B, K]
    return chosen, values.gather(1, position).masked_fill(chosen == 0, -torch.inf)


def genre_cap(hot: Tensor, keep: Tensor, k: int, cap: int) -> Tensor:
    """Greedy in rank order: admit candidate c when the list has room and each of its genres (``hot
    [B, C, G]``) has fewer than ``cap`` admitted items. Returns ``[B, C]`` bool."""
    size, width = keep.shape
    counts = torch.zeros(size, hot.shape[-1])
    taken = torch.zeros(size, dtype=torch.long)
    admitted = torch.zeros_like(keep)
    for c in range(width):
        ok = keep[:, c] & (taken < k) & ((counts + hot[:, c]) <= cap).all(dim=1)
        counts += hot[:, c] * ok[:, None]
        taken += ok
        admitted[:, c] = ok
        if bool((taken >= k).all()):
            break
    return admitted


def mmr(ids: Tensor, scores: Tensor, keep: Tensor, hot: Tensor, k: int, weight: float) -> tuple[Tensor, Tensor]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998) with genre-Jaccard similarity.

    Step by step pick ``argmax weight * score - (1 - weight) * max_{s picked} jaccard(c, s)`` among the
    kept candidates; ``hot [B, C, G]``. Returns ids in MMR's order with their scores.
    """
    size, width = ids.shape
    inter = hot @ hot.transpose(1, 2)  # [B, C, C]
    count = hot.sum(dim=-1)  # [B, C]
    union = count[:, :, None] + count[:, None, :] - inter
    similarity = torch.where(union > 0, inter / union.clamp(min=1.0), torch.zeros_like(inter))
    relevance = scores.masked_fill(~keep, 0.0)
    picked = torch.zeros_like(keep)
    closest = torch.zeros(size, width)  # [B, C] max similarity to the picked items
    rows = torch.arange(size)
    out_ids, out_scores = [], []
    for _ in range(min(k, width)):
        value = (weight * relevance - (1 - weight) * closest).masked_fill(~keep | picked, -torch.inf)
        best = value.argmax(dim=1)  # [B]
        found = torch.isfinite(value[rows, best])
        picked[rows, best] |= found
        closest = torch.maximum(closest, similarity[rows, best])
        out_ids.append(torch.where(found, ids[rows, best], 0))
        out_scores.append(torch.where(found, scores[rows, best], -torch.inf))
    out = torch.stack(out_ids, dim=1), torch.stack(out_scores, dim=1)
    return compact(out[0], out[1], out[0] > 0, k)
