"""``Pipeline``: retrieval -> DIN ranking -> re-ranking, behind one FastAPI-free call per micro-batch.

``recommend(user, seen)`` is the serving entry point: B users' feature rows (from the feature store
or offline rows) and what each has seen in, the top-K dataset item ids with calibrated click
probabilities out. Items added after training (``add_items``) get ids ``N + 1, N + 2, ...``, are
embedded from their content by the item tower and join the retrieval index at once.

The catalog (item feature rows, item vectors, index, genres) is one immutable ``CatalogState``
replaced whole by ``add_items`` / ``update_item_features``, so a ``recommend`` running in another
thread always sees one consistent catalog.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from seekrec.features.batch import FeatureBatch
from seekrec.features.spec import FeatureSpec
from seekrec.features.store import FeatureStore
from seekrec.models.calibration import Calibrator
from seekrec.models.din import DIN
from seekrec.models.layers.features import cat_feature_batches, with_item_ids
from seekrec.models.two_tower import TwoTower
from seekrec.pipeline.features import ITEM_ID_COLUMN, ItemView
from seekrec.pipeline.llm_stage import LLMStage, item_histories
from seekrec.pipeline.stage_config import StageConfig
from seekrec.pipeline.stages import (
    Ranker,
    Retriever,
    SequenceRetriever,
    TwoTowerRetriever,
    genre_matrix,
    rerank,
    retrieve,
    seen_mask,
)
from seekrec.retrieval.index import ItemIndex
from seekrec.timing import StageClock, StageObserver

if TYPE_CHECKING:
    from seekrec.llm.prompts import History

log = logging.getLogger(__name__)

CandidateFeatures = Callable[[Tensor], FeatureBatch]
"""``ids [B, C]`` -> full item rows (``B * C``, spec columns + ``item_id``) of those items, e.g. with
window counts as of the request time; the default reads the pipeline's catalog."""


@dataclass
class Recommendations:
    """Per user: ``ids [B, K]`` (0 = empty slot), ``scores [B, K]`` calibrated click probabilities
    (the sigmoid of the LLM's scores with ``reranker = "llm"``; -inf at empty slots), and ``candidates
    [B, R]`` the retrieved ids before ranking."""

    ids: Tensor
    scores: Tensor
    candidates: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def row(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """User ``b``'s list without empty slots: ``(ids [K_b], scores [K_b])``."""
        filled = self.ids[b] > 0
        return self.ids[b][filled].numpy(), self.scores[b][filled].numpy()


@dataclass(frozen=True)
class CatalogState:
    """Everything that grows with the catalog: rows ``0..N'`` (row i = item i)."""

    features: FeatureBatch  # full item rows, with item_id (0 for items added after training)
    vectors: Tensor  # [N' + 1, D] item-tower vectors
    index: ItemIndex  # over ids 1..N'
    genres: Tensor | None  # [N' + 1, G] multi-hot of genre_column, for diversity
    genre_column: str
    new_raw_ids: tuple[str, ...]  # raw ids of items N + 1 .. N'

    @property
    def n_ids(self) -> int:
        return len(self.features) - 1


class Pipeline:
    """A trained two-tower, DIN ranker and calibrator (plus an optional SASRec) over one feature spec.

    ``catalog``: full item rows of ids ``0..N`` (plus any added items), with ``item_id``.
    ``sequence_model`` / ``sequence_max_len``: a next-item model for ``stages.retriever = "sasrec"``
    (``sequence_name``: its model-registry name, for saving). ``retriever`` is the two-tower stage
    (it also embeds the catalog); ``active_retriever`` the one ``stages`` picked, chosen when the
    pipeline is built or its stages change. ``llm``: the LLM re-ranking stage, loaded from
    ``stages.llm_run`` (``with_llm`` attaches a loaded one).
    """

    def __init__(self, spec: FeatureSpec, stages: StageConfig, two_tower: TwoTower, view: ItemView, din: DIN,
                 calibrator: Calibrator, catalog: FeatureBatch, *, sequence_model: torch.nn.Module | None = None,
                 sequence_max_len: int | None = None, sequence_name: str = "sasrec",
                 new_raw_ids: Sequence[str] = ()) -> None:
        if len(catalog) != spec.n_items + 1 + len(new_raw_ids):
            raise ValueError(f"the catalog has {len(catalog)} rows; expected ids 0..{spec.n_items} plus "
                             f"{len(new_raw_ids)} added items")
        self.spec, self.two_tower_model, self.din, self.calibrator = spec, two_tower, din.eval(), calibrator
        self.retriever = TwoTowerRetriever(two_tower, view)
        self.ranker = Ranker(din, calibrator)
        self.sequence, self.sequence_name = None, sequence_name
        if sequence_model is not None:
            if sequence_max_len is None:
                raise ValueError("sequence_model needs sequence_max_len (its training max_len)")
            self.sequence = SequenceRetriever(sequence_model, sequence_max_len)
            if self.sequence.n_items != spec.n_items:
                raise ValueError(f"the sequence model knows {self.sequence.n_items} items, the feature spec "
                                 f"{spec.n_items}: both must come from the same dataset")
        self.llm: LLMStage | None = None
        self.stages, self.active_retriever, self.llm = self._check_stages(stages)
        with torch.inference_mode():
            self._state = self._build_state(catalog, tuple(str(r) for r in new_raw_ids))

    # -- configuration ---------------------------------------------------------------------------------
    def _check_stages(self, stages: StageConfig) -> tuple[StageConfig, Retriever, LLMStage | None]:
        """Validate ``stages`` against this pipeline, pick the retriever they name and load the LLM stage
        they name unless it is the one held (once, not per call)."""
        if stages.retriever == "sasrec" and self.sequence is None:
            raise ValueError("stages.retriever='sasrec' but this pipeline has no sequence model; train the bundle "
                             "with sasrec_run set, or use retriever='two_tower'")
        columns = dict(self.spec.schema("item").categorical)
        if stages.diversity != "none" and stages.genre_column not in columns:
            raise ValueError(f"stages.genre_column={stages.genre_column!r} is not an item categorical column of the "
                             f"feature spec ({sorted(columns)}); name one or set stages.diversity='none'")
        retriever: Retriever = self.sequence if stages.retriever == "sasrec" and self.sequence is not None \
            else self.retriever
        llm = self.llm
        if stages.llm_run is None:
            llm = None
        elif llm is None or llm.run != stages.llm_run:
            llm = LLMStage.load(stages.llm_run, device=stages.llm_device)
        if llm is not None and llm.n_items != self.spec.n_items:
            raise ValueError(f"the LLM run {llm.run} has texts of {llm.n_items} items, the feature spec "
                             f"{self.spec.n_items}: fine-tune it on the dataset the pipeline was trained on")
        return stages, retriever, llm

    def with_stages(self, stages: StageConfig) -> Pipeline:
        """The same models and catalog run with other stage settings (retriever, R, K, diversity,
        re-ranker); an LLM stage is loaded only when ``stages.llm_run`` names another run."""
        other = copy.copy(self)
        other.stages, other.active_retriever, other.llm = self._check_stages(stages)
        return other

    def with_llm(self, llm: LLMStage, reranker: str = "llm") -> Pipeline:
        """The same pipeline with ``llm`` as its LLM stage (``stages.llm_run = llm.run``), re-ranking with
        ``reranker``."""
        other = copy.copy(self)
        other.llm = llm
        other.stages, other.active_retriever, other.llm = other._check_stages(
            dataclasses.replace(self.stages, reranker=reranker, llm_run=llm.run))
        return other

    @property
    def n_items(self) -> int:
        """Items the pipeline can recommend: the spec's ``N`` plus those added since."""
        return self._state.n_ids

    @property
    def catalog(self) -> FeatureBatch:
        return self._state.features

    @property
    def new_raw_ids(self) -> tuple[str, ...]:
        return self._state.new_raw_ids

    # -- the serving entry point -----------------------------------------------------------------------
    @torch.inference_mode()
    def recommend(self, user: FeatureBatch, seen: Sequence[Sequence[int] | np.ndarray], *, k: int | None = None,
                  item_features: CandidateFeatures | None = None,
                  histories: Sequence[History] | None = None, on_stage: StageObserver | None = None) -> Recommendations:
        """Top-K items for B users: retrieve R candidates, rank them with DIN (or the LLM), re-rank.

        ``user``: B user rows of the spec (``FeatureStore.user_features`` or ``OfflineRows.features``).
        ``seen``: per user, the dataset item ids already consumed; they are never returned when
        ``stages.filter_seen``. ``k`` defaults to ``stages.k``. ``item_features`` supplies fresh item
        rows for the candidates (see ``CandidateFeatures``); by default the catalog's rows are used.
        ``histories``: what the LLM stage reads of each user (``reranker = "llm"`` only); by default
        ``seen`` in the order given, as item ids without ratings or times. ``on_stage``: told the seconds of
        ``search`` (user tower and ANN), ``rank`` and ``rerank``.
        """
        if len(seen) != len(user):
            raise ValueError(f"seen has {len(seen)} rows for {len(user)} users; pass one id list per user")
        if histories is None and self.stages.reranker == "llm":
            histories = item_histories(seen)
        clock = StageClock(on_stage)
        exclude = self.exclusions(seen)
        candidates, retrieval_logits = self.retrieve(user, exclude)
        clock.lap("search")
        ranker_logits = self.rank(user, candidates, item_features, histories=histories)
        clock.lap("rank")
        recs = self.finish(candidates, retrieval_logits, ranker_logits, exclude, k)
        clock.lap("rerank")
        return recs

    def exclusions(self, seen: Sequence[Sequence[int] | np.ndarray]) -> Tensor:
        """``[B, N' + 1]`` bool: the items each user must not get (their seen items, with ``filter_seen``)."""
        n_ids = self._state.n_ids
        if not self.stages.filter_seen:
            return torch.zeros(len(seen), n_ids + 1, dtype=torch.bool)
        return seen_mask(seen, n_ids)

    @torch.inference_mode()
    def retrieve(self, user: FeatureBatch, exclude: Tensor, n_candidates: int | None = None) -> tuple[Tensor, Tensor]:
        """Stage 1: ``[B, R]`` candidate ids, best first (0 = empty slot), and their retrieval logits."""
        r = self.stages.n_candidates if n_candidates is None else n_candidates
        retriever = self.active_retriever
        index = retriever.search_index(self._state.index)
        candidates, scores = retrieve(index, retriever.encode_users(user), exclude, r)
        return candidates, scores * retriever.logit_scale

    @torch.inference_mode()
    def rank(self, user: FeatureBatch, candidates: Tensor, item_features: CandidateFeatures | None = None, *,
             histories: Sequence[History] | None = None) -> Tensor:
        """Stage 2: ``[B, R]`` calibrated DIN log-odds of each candidate (-inf at empty slots), or with
        ``reranker = "llm"`` the LLM's scores of them from ``histories`` (one per user)."""
        if self.stages.reranker == "llm":
            if histories is None or self.llm is None:
                raise ValueError("the llm re-ranker reads each user's history: pass histories= (one per user)")
            return self.llm.logits(histories, candidates)
        rows = item_features(candidates) if item_features is not None else \
            self._state.features.index(candidates.flatten())
        return self.ranker.logits(user, rows).masked_fill(candidates == 0, -torch.inf)

    def finish(self, candidates: Tensor, retrieval_logits: Tensor, ranker_logits: Tensor, exclude: Tensor,
               k: int | None = None) -> Recommendations:
        """Stage 3: order by the ranker (and ``retrieval_weight`` times the retrieval logit), drop seen items
        and repeats, diversify, keep K; scores are the sigmoid of the ranker's logits (DIN: calibrated
        click probabilities)."""
        k = self.stages.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        probabilities = torch.sigmoid(ranker_logits)  # [B, R], 0 at empty slots
        weight = self.stages.retrieval_weight
        order = torch.sigmoid(ranker_logits + weight * retrieval_logits) if weight else probabilities
        order = order.masked_fill(candidates == 0, -torch.inf)
        state = self._state
        genres = state.genres if state.genre_column == self.stages.genre_column else self._genres(state.features)
        ids, scores = rerank(candidates, order, k, self.stages, values=probabilities, exclude=exclude, genres=genres)
        return Recommendations(ids, scores, candidates)

    # -- the catalog ---------------------------------------------------------------------------------
    def add_items(self, raw_ids: Sequence[object], features: FeatureBatch) -> np.ndarray:
        """Add items the models never saw; returns their ids (``N' + 1 ..``).

        ``features``: their spec item rows, e.g. ``FeatureStore.item_features(raw_ids)`` after
        ``put_attributes``, or ``features.new_item_features`` from their title and genres. The item
        tower embeds them from that content (id 0) and the index is rebuilt with them; the SASRec
        retriever cannot return them (it has no vector for an item without interactions).
        """
        raw = [str(r) for r in raw_ids]
        state = self._state
        known = set(state.new_raw_ids) | {r for r, i in zip(raw, self.spec.item_index(raw), strict=True) if i > 0}
        clash = sorted({r for r in raw if r in known} | {r for r in raw if raw.count(r) > 1})
        if clash:
            raise ValueError(f"items {clash[:5]} are already in the catalog or repeated; add each new item once")
        if len(features) != len(raw):
            raise ValueError(f"features has {len(features)} rows for {len(raw)} raw ids")
        rows = with_item_ids(_without_id(features), torch.zeros(len(raw), dtype=torch.long))
        with torch.inference_mode():
            self._state = self._build_state(cat_feature_batches([state.features, rows]),
                                            state.new_raw_ids + tuple(raw), known=state, n_known=state.n_ids + 1)
        if not self.active_retriever.retrieves_added_items:
            log.warning("added %d items, but the %s retriever cannot retrieve items without interactions; "
                        "they are reachable through retriever='two_tower'", len(raw), self.stages.retriever)
        return np.arange(state.n_ids + 1, state.n_ids + 1 + len(raw))

    def update_item_features(self, features: FeatureBatch) -> None:
        """Replace every item row ``0..N'`` (e.g. fresh window counts from the store, edited titles) and
        re-encode the item vectors and the index from them (one pass over the catalog)."""
        if len(features) != len(self._state.features):
            raise ValueError(f"features has {len(features)} rows; the catalog has {len(self._state.features)} "
                             "(ids 0..N', row i = item i)")
        ids = self._state.features.categorical[ITEM_ID_COLUMN][:, 0]
        with torch.inference_mode():
            self._state = self._build_state(with_item_ids(_without_id(features), ids), self._state.new_raw_ids)

    def raw_item_ids(self, ids: np.ndarray | Sequence[int]) -> list[str]:
        """Dataset ids (``1..N'``) -> raw item ids, added items included."""
        ids = np.asarray(ids, dtype=np.int64)
        n, added = self.spec.n_items, self._state.new_raw_ids
        if np.any((ids < 1) | (ids > n + len(added))):
            raise KeyError(f"ids must lie in 1..{n + len(added)}")
        known = [str(r) for r in self.spec.item_ids.decode(np.minimum(ids, n)).tolist()]
        return [known[i] if ids[i] <= n else added[ids[i] - n - 1] for i in range(len(ids))]

    def item_ids(self, raw_ids: Sequence[object]) -> np.ndarray:
        """Raw item ids -> dataset ids (0 for an id the pipeline does not know)."""
        raw = [str(r) for r in raw_ids]
        ids = self.spec.item_index(raw)
        added = {r: self.spec.n_items + 1 + i for i, r in enumerate(self._state.new_raw_ids)}
        return np.array([added.get(r, int(i)) for r, i in zip(raw, ids, strict=True)], dtype=np.int64)

    def store_item_features(self, store: FeatureStore, now: float | None = None) -> CandidateFeatures:
        """A ``CandidateFeatures`` reading candidates' rows from ``store`` as of ``now`` (default: the clock)."""
        def fetch(ids: Tensor) -> FeatureBatch:
            flat = ids.flatten()
            raw = self.raw_item_ids(flat.clamp(min=1).numpy())
            rows = store.item_features(raw, now)
            known = torch.where(flat <= self.spec.n_items, flat, torch.zeros_like(flat))
            return with_item_ids(rows, known)

        return fetch

    def _build_state(self, features: FeatureBatch, new_raw_ids: tuple[str, ...], *, known: CatalogState | None = None,
                     n_known: int = 0) -> CatalogState:
        """Vectors, index and genres for ``features``; rows below ``n_known`` reuse ``known``'s vectors."""
        if known is not None and n_known:
            fresh = self.retriever.item_vectors(features.index(torch.arange(n_known, len(features))))
            vectors = torch.cat([known.vectors[:n_known], fresh])
        else:
            vectors = self.retriever.item_vectors(features)
        index = ItemIndex(vectors[1:], ids=np.arange(1, len(features)), metric=self.retriever.metric)
        return CatalogState(features, vectors, index, self._genres(features), self.stages.genre_column, new_raw_ids)

    def _genres(self, features: FeatureBatch) -> Tensor | None:
        """``[N' + 1, G]`` multi-hot of the stage config's genre column (None when the spec lacks it)."""
        column = self.stages.genre_column
        cardinality = dict(self.spec.schema("item").categorical).get(column)
        return None if cardinality is None else genre_matrix(features.categorical[column], cardinality)


def _without_id(features: FeatureBatch) -> FeatureBatch:
    return FeatureBatch({k: v for k, v in features.categorical.items() if k != ITEM_ID_COLUMN}, features.dense,
                        features.text, features.sequence, features.recency)
