"""``SequencePredictor``: one sequence-model version turned into ranked raw item ids (a ``Predictor``).

A request batch becomes one padded ``[B, L]`` tensor, one ``encode_users`` under ``inference_mode``,
one ANN search for candidates, and an exact rescoring of those candidates with the model's own
``similarity``, so a returned score is the score ``score_all`` would give that item. Users the model
cannot personalise for (unknown, or no item it knows) get the most popular items instead, flagged
as a fallback so clients and experiment analysis can tell the two apart.

A model with event-time / action inputs (``needs_context``) also gets the events' times and values from
the queries and, as the query time of the last position, the request time ("now", in unix seconds):
what it predicts is the next item as of the moment it is asked.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from seekrec.data.sequences import SequenceContext
from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.models.quantization import QUANTIZE_MODES, quantize_encoder
from seekrec.online.event_log import EventLog, LoggedEvent
from seekrec.registry import MODEL_KIND, LoadedModel, ModelRegistry, RegistryError
from seekrec.retrieval.index import IndexConfig, ItemIndex
from seekrec.serving.predictor import (
    ItemsNotAddableError,
    LoadContext,
    PopularItems,
    Query,
    Recommendation,
    describe_version,
    route,
)
from seekrec.timing import StageClock, StageObserver

log = logging.getLogger(__name__)


class SequencePredictor:
    """A loaded model version, its catalog and an ANN index over its item embeddings ``1..N``.

    Sequence models learn new items from their first events (the online trainer grows their item
    table), so ``add_items`` refuses, and they read histories from the queries, so ``observe`` and
    ``replay`` have nothing to keep."""

    kind = MODEL_KIND

    def __init__(self, loaded: LoadedModel, catalog: Catalog, *, candidates: int = 200,
                 index_config: IndexConfig | None = None, compile_encoder: bool = False, quantize: str = "none",
                 clock: Callable[[], float] = time.time) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
        self.version, self.manifest, self.model = loaded.version, loaded.manifest, loaded.model.eval()
        self.catalog, self.candidates = catalog, candidates
        self.max_len = int(loaded.manifest["model_config"]["max_len"])
        # event-time / action inputs: queries must carry times and values, and "now" is the query time
        self.needs_context = bool(getattr(getattr(self.model, "config", None), "needs_context", False))
        self.clock = clock  # the request time's source (unix seconds); tests pin it
        self.on_stage: StageObserver | None = None  # seconds of encode, search and rank per batch
        # a catalog can only be longer than the model if items were added after it was trained
        self.n_items = min(int(self.model.n_items), len(catalog.items))
        if self.n_items < 1:
            raise RegistryError(f"{loaded.version}: the model and its catalog share no items")
        self.device = next(self.model.parameters()).device
        with torch.inference_mode():
            self.item_embeddings = self.model.encode_items(torch.arange(self.n_items + 1, device=self.device))  # [N+1, D]
        self.index = ItemIndex(self.item_embeddings[1:].cpu(), ids=np.arange(1, self.n_items + 1),
                               metric=self.model.similarity.kind, config=index_config)
        self._popular = PopularItems(catalog, self.n_items, self.version)
        # after the item embeddings: they, and the exact rescoring over them, stay fp32 (docs/inference-int8.md)
        self.encoder = "int8" if quantize == "int8" else "fp32"
        if quantize == "int8":
            quantize_encoder(self.model)
        # torch.compile fuses the encoder's many small ops: at serving batch sizes eager PyTorch spends
        # most of the forward in per-op overhead (measured ~40% less CPU per forward on 2 cores). The
        # batch dimension is dynamic, so one compilation serves every batch size; it costs about a
        # minute per loaded version, so it suits stable deployments rather than per-second publishing.
        self._encode_users = (torch.compile(self.model.encode_users, dynamic=True) if compile_encoder
                              else self.model.encode_users)

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None, *, candidates: int = 200,
                      index_config: IndexConfig | None = None, device: str = "cpu",
                      compile_encoder: bool = False, quantize: str = "none",
                      on_stage: StageObserver | None = None) -> SequencePredictor:
        """Load (and checksum) ``version`` (None: CURRENT) with its catalog and build its index."""
        loaded = registry.load(version, device=device)
        path = loaded.directory / CATALOG_FILE
        if not path.is_file():
            raise RegistryError(f"{path}: missing; serving needs the item catalog that `seekrec train` writes")
        try:
            catalog = Catalog.from_bytes(path.read_bytes())
        except (ValueError, KeyError) as exc:
            raise RegistryError(f"{path}: unreadable catalog ({exc}); publish the model again") from exc
        predictor = cls(loaded, catalog, candidates=candidates, index_config=index_config,
                        compile_encoder=compile_encoder, quantize=quantize)
        predictor.check()
        predictor.on_stage = on_stage  # from now on: the self-check is not a request
        log.info("loaded %s: %s encoder, %s index over %d items", loaded.version, predictor.encoder,
                 predictor.index.kind, predictor.n_items)
        return predictor

    @classmethod
    def load(cls, registry: ModelRegistry, version: str, context: LoadContext) -> SequencePredictor:
        """``from_registry`` with the server's load settings (see ``serving.loading``)."""
        return cls.from_registry(registry, version, candidates=context.candidates, index_config=context.index_config,
                                 device=context.device, compile_encoder=context.compile_encoder,
                                 quantize=context.quantize, on_stage=context.on_stage)

    def check(self) -> None:
        """Smoke-test the version before it serves: one forward pass must give finite scores and full
        results. Checksums prove the file is the one published, not that its weights are usable."""
        with torch.inference_mode():
            finite = bool(torch.isfinite(self.item_embeddings[1:]).all())
        # two users: a compiled encoder specialises batch size 1, so this also compiles the general case
        now, k = int(self.clock()), min(10, self.n_items)
        queries = [Query("self-check", (1,), k, exclude_seen=False, times=(now,), values=(1.0,)),
                   Query("self-check-2", (1, min(2, self.n_items)), k, exclude_seen=False, times=(now - 60, now),
                         values=(1.0, 1.0))]
        rec = self._rank(queries)[0]
        if not finite or len(rec.item_ids) != min(10, self.n_items) or not all(map(math.isfinite, rec.scores)):
            raise RegistryError(f"{self.version}: the model produces non-finite scores; it will not be served: "
                                "promote another version")

    def describe(self) -> dict[str, Any]:
        """Version facts for ``/version`` and metrics."""
        return describe_version(self.version, self.manifest, self.n_items, self.index.kind, encoder=self.encoder)

    def recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Top-``k`` items for every query, in query order; one forward pass for the whole batch."""
        return route(queries, self._rank, self._popular)

    def _rank(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Model path: ``[B, L]`` histories -> users ``[B, D]`` -> ANN ``[B, C]`` -> exact scores -> top K.

        Built with whole-batch numpy indexing rather than per-row tensors: at serving batch sizes the
        Python around the forward pass costs as much as the forward pass itself."""
        b, width = len(queries), self.max_len
        inputs = np.zeros((b, width), dtype=np.int64)  # [B, L] left-padded
        for row, query in enumerate(queries):
            recent = query.history[-width:]
            inputs[row, width - len(recent) :] = recent
        context = self._context(queries, inputs) if self.needs_context else None
        seen = [q.history if q.exclude_seen else () for q in queries]
        seen_rows = np.repeat(np.arange(b), [len(h) for h in seen])
        seen_ids = np.fromiter(itertools.chain.from_iterable(seen), dtype=np.int64, count=len(seen_rows))
        # enough candidates that every user keeps k items after their seen ones are removed
        n_cand = min(self.n_items, max(max(self.candidates, q.k + len(h)) for q, h in zip(queries, seen)))
        k = min(max(q.k for q in queries), n_cand)
        clock = StageClock(self.on_stage)
        with torch.inference_mode():
            ids = torch.from_numpy(inputs).to(self.device)  # [B, L]
            users = (self._encode_users(ids) if context is None  # [B, D]
                     else self._encode_users(ids, context.to(self.device)))
            clock.lap("encode")
            _, cand = self.index.search(users, n_cand)  # [B, C] item ids, -1 where HNSW found none
            clock.lap("search")
            cand = cand.clamp(min=0).to(self.device)
            scores = self.model.similarity.pairwise(users.unsqueeze(1), self.item_embeddings[cand]).float()  # [B, C]
            blocked = torch.zeros(b, self.n_items + 1, dtype=torch.bool)  # [B, N + 1]; column 0: padding
            blocked[:, 0] = True
            blocked[torch.from_numpy(seen_rows), torch.from_numpy(seen_ids)] = True
            scores = scores.masked_fill(blocked.to(self.device).gather(1, cand), float("-inf"))
            top_scores, top_pos = scores.topk(k, dim=1)  # [B, K]
            top_ids = cand.gather(1, top_pos).cpu().numpy()
            top_scores = top_scores.cpu().numpy()
        clock.lap("rank")
        out = []
        for row, query in enumerate(queries):
            row_scores = top_scores[row, : query.k]
            keep = np.isfinite(row_scores)
            out.append(Recommendation(query.user_id, tuple(self.catalog.items.decode(top_ids[row, : query.k][keep])),
                                      tuple(row_scores[keep].tolist()), self.version, False))
        return out

    def _context(self, queries: Sequence[Query], inputs: np.ndarray) -> SequenceContext:
        """The ``SequenceContext`` of ``inputs [B, L]``: the queries' event times and values, and the request
        time (``clock``, whole seconds) as the last position's query time (``SequenceContext.of_history``)."""
        b, width = inputs.shape
        times = np.zeros((b, width), dtype=np.int64)
        values = np.zeros((b, width), dtype=np.float32)
        for row, query in enumerate(queries):
            if query.times is None or query.values is None:
                raise ValueError(f"{self.version} has event-time / action inputs: query {query.user_id!r} needs the "
                                 "events' times and values (Query.times, Query.values)")
            n = min(len(query.history), width)
            if n:
                times[row, width - n :] = query.times[-n:]
                values[row, width - n :] = query.values[-n:]
        return SequenceContext.of_history(inputs, times, values, int(self.clock()))

    @property
    def response_cacheable(self) -> bool:
        """Whether an answer is a function of the query alone (the server's response cache may keep it): yes,
        unless the model reads the request time (event-time inputs)."""
        return not self.needs_context

    def observe(self, events: Sequence[LoggedEvent]) -> None:
        """Nothing to keep: the server's histories reach this model through each query."""

    def replay(self, event_log: EventLog) -> int:
        """Nothing to catch up with (see ``observe``); reads no event."""
        return 0

    def follow_restarted_log(self) -> None:
        """Nothing kept per offset (see ``observe``)."""

    def add_items(self, records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Refused: an item table row is learnt from interactions, not from a title."""
        raise ItemsNotAddableError(f"{self.version} is a sequence model: it learns new items from their first "
                                   "events (seekrec stream-train); only a pipeline bundle adds items by content")
