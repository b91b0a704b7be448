"""``LLMPredictor``: an ``llm_rerank`` version (sequence retriever -> fine-tuned LLM re-ranker) as a ``Predictor``.

Retrieval is the bundled sequence model served exactly as ``SequencePredictor`` serves it (one batched
forward, ANN search, exact rescoring, seen items masked), asked for ``max(R, k)`` items per query; the
LLM then scores those candidates from the query's history rendered as text (one shared prompt prefix
per user) and orders them by ``llm score + w * retrieval logit``, the run's ``w``. Returned scores are
those combined scores. Queries carry item ids only, so a run whose prompts render ratings or recency
is refused at load. Like a sequence model it keeps no state of its own (histories arrive with each
query) and cannot add items by their content: the LLM has no text for them and the retriever no
vector.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np

from seekrec.data.vocab import Catalog
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.pipeline.llm_bundle import LLM_RERANK_KIND, read_llm_bundle
from seekrec.registry import LoadedModel, ModelRegistry, RegistryError
from seekrec.serving.predictor import (
    ItemsNotAddableError,
    LoadContext,
    PopularItems,
    Query,
    Recommendation,
    describe_version,
    route,
)
from seekrec.serving.sequence_predictor import SequencePredictor

log = logging.getLogger(__name__)


class Reranker(Protocol):
    """What the predictor needs of ``llm.rerank.LLMReranker``: its item range and ``rerank``."""

    n_items: int

    def rerank(self, history: Any, items: np.ndarray,
               retrieval_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class LLMPredictor:
    """A retrieval ``SequencePredictor`` and an LLM re-ranker of its top ``n_candidates`` (R) per query.

    ``recommend`` may run in a worker thread (one micro-batch at a time); nothing here changes after
    load, so no lock is needed."""

    kind = LLM_RERANK_KIND

    def __init__(self, version: str, manifest: Mapping[str, Any], retrieval: SequencePredictor, reranker: Reranker,
                 n_candidates: int) -> None:
        if n_candidates < 1:
            raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
        if reranker.n_items < retrieval.n_items:
            raise RegistryError(f"{version}: the LLM has texts of {reranker.n_items} items but the retriever serves "
                                f"{retrieval.n_items}; publish a retriever and an LLM run of the same dataset")
        self.version, self.manifest = version, dict(manifest)
        self.retrieval, self.reranker, self.n_candidates = retrieval, reranker, n_candidates
        self._popular = PopularItems(retrieval.catalog, retrieval.n_items, version)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None, context: LoadContext) -> LLMPredictor:
        """Load (and checksum) an ``llm_rerank`` version: its retriever, index and LLM; smoke-test them."""
        from seekrec.llm.rerank import LLMReranker  # heavy: transformers

        bundle = registry.load_bundle(version)
        if bundle.kind != LLM_RERANK_KIND:
            raise RegistryError(f"{bundle.version} is a {bundle.kind}, not an {LLM_RERANK_KIND} version")
        parts = read_llm_bundle(bundle.directory, device=context.device)  # refuses rating / recency prompts
        manifest = {**bundle.manifest, "model_config": parts.model_config}  # SequencePredictor reads max_len there
        retrieval = SequencePredictor(LoadedModel(bundle.version, manifest, parts.model, bundle.directory),
                                      parts.catalog, candidates=context.candidates,
                                      index_config=context.index_config, compile_encoder=context.compile_encoder,
                                      quantize=context.quantize)
        retrieval.check()
        reranker = LLMReranker.load(parts.llm_dir, device=context.device)
        predictor = cls(bundle.version, bundle.manifest, retrieval, reranker, parts.n_candidates)
        predictor.check()
        log.info("loaded %s: %s over %d items, LLM re-ranks the top %d (w=%.3g)", bundle.version,
                 parts.model_name, predictor.n_items, parts.n_candidates, parts.meta["llm"]["weight"])
        return predictor

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, context: LoadContext) -> LLMPredictor:
        """``from_registry`` with the server's load settings (see ``serving.loading``)."""
        return cls.from_registry(registry, version, context)

    # -- the Predictor surface the server uses ---------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.retrieval.n_items

    @property
    def needs_context(self) -> bool:
        """Whether queries must carry event times and values (a retriever with event-time / action inputs)."""
        return self.retrieval.needs_context

    @property
    def catalog(self) -> Catalog:
        return self.retrieval.catalog

    def describe(self) -> dict[str, Any]:
        """Version facts for ``/version`` and metrics."""
        return describe_version(self.version, self.manifest, self.n_items,
                                f"{self.retrieval.index.kind} top {self.n_candidates} -> llm",
                                encoder=self.retrieval.encoder)

    def check(self) -> None:
        """One request through retrieval and the LLM must give finite scores and a full list."""
        k = min(10, self.n_items)
        now = int(self.retrieval.clock())
        rec = self._rank([Query("self-check", (1,), k, exclude_seen=False, times=(now,), values=(1.0,))])[0]
        if len(rec.item_ids) != k or not all(map(math.isfinite, rec.scores)):
            raise RegistryError(f"{self.version}: the LLM re-ranker produces non-finite scores or short lists; it "
                                "will not be served: promote another version")

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-k per query, in order; users with no usable history get the most popular items (fallback)."""
        return route(queries, self._rank, self._popular)

    def _rank(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Retrieve ``max(R, k)`` per query in one batch, then re-rank each query's candidates with the LLM."""
        from seekrec.llm.prompts import History

        wide = [replace(q, k=min(self.n_items, max(self.n_candidates, q.k))) for q in queries]
        out = []
        for query, retrieved in zip(queries, self.retrieval.recommend(wide), strict=True):
            ids = self.catalog.items.encode(list(retrieved.item_ids))  # [C] model ids, retriever's best first
            logits = np.asarray(retrieved.scores, dtype=np.float64)  # exact retrieval logits
            items, scores = self.reranker.rerank(History(np.asarray(query.history, dtype=np.int64)), ids, logits)
            top = slice(0, query.k)
            out.append(Recommendation(query.user_id, tuple(self.catalog.items.decode(items[top])),
                                      tuple(float(s) for s in scores[top]), self.version, False))
        return out

    # -- no state of its own: the retriever's answers (it keeps none) -------------------------------------
    def observe(self, events: Sequence[LoggedEvent]) -> None:
        """Histories reach the retriever and the LLM through each query."""
        self.retrieval.observe(events)

    def replay(self, event_log: EventLog) -> int:
        return self.retrieval.replay(event_log)

    def follow_restarted_log(self) -> None:
        self.retrieval.follow_restarted_log()

    def add_items(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Refused: the retriever learns items from interactions and the LLM's item texts are fixed at training."""
        raise ItemsNotAddableError(f"{self.version} re-ranks a sequence model's candidates with an LLM: neither can "
                                   "add items by content (the retriever learns them from events); only a pipeline "
                                   "bundle adds items by content")
