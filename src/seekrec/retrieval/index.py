"""``ItemIndex``: FAISS top-K over item embeddings, exact for small catalogs and HNSW for large ones.

Why two kinds: a flat inner-product scan is exact and, below some tens of thousands of items, as fast
as a graph search on one CPU; past that the scan grows linearly while HNSW stays near logarithmic at a
small recall cost. FAISS has no cosine metric, so cosine models index L2-normalised vectors.

Either kind stores its vectors as fp32 (``codec="fp32"``) or as int8 codes (``codec="sq8"``: FAISS's
8-bit scalar quantizer, one trained min/max range per dimension): a quarter of the bytes per item to
scan, at the cost of approximate scores. The server rescores the candidates exactly with fp32 item
embeddings, so sq8 can change which items are candidates, never a returned item's score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from seekrec.retrieval.exact import check_metric

INDEX_CODECS = ("fp32", "sq8")

try:
    import faiss
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError("seekrec.retrieval.index needs FAISS: pip install 'seekrec[serve]' "
                              "(or pip install faiss-cpu)") from exc


def set_search_threads(n: int) -> None:
    """Threads FAISS searches with (process-wide). A server's searches are small batches, where
    OpenMP's fork-join and spinning cost far more than they save: one thread each is the right choice."""
    if n < 1:
        raise ValueError(f"search threads must be >= 1, got {n}")
    faiss.omp_set_num_threads(n)


@dataclass(frozen=True)
class IndexConfig:
    """When to switch from the exact scan to HNSW, and the HNSW graph parameters.

    ``hnsw_threshold``: catalogs with at least this many items use HNSW. ``hnsw_m``: neighbours per
    node (memory and recall grow with it). ``ef_construction`` / ``ef_search``: candidate list sizes
    at build / query time (recall against speed); a search always uses at least ``k``. ``codec``: how
    the index stores vectors, ``fp32`` or ``sq8`` (int8 scalar quantizer, see the module docstring).
    """

    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    codec: str = "fp32"

    def __post_init__(self) -> None:
        if self.codec not in INDEX_CODECS:
            raise ValueError(f"IndexConfig.codec must be one of {INDEX_CODECS}, got {self.codec!r}")
        if self.hnsw_threshold < 0:
            raise ValueError(f"hnsw_threshold must be >= 0 items, got {self.hnsw_threshold}")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")


class ItemIndex:
    """Top-K search over ``vectors [N, D]``; results are ``ids[row]`` (default: the row numbers).

    Searches are thread-safe: the index is read-only after construction and per-search parameters are
    passed with each call, never set on the shared index.
    """

    def __init__(self, vectors: Tensor | np.ndarray, ids: np.ndarray | None = None, metric: str = "dot",
                 config: IndexConfig | None = None) -> None:
        check_metric(metric)
        self.metric, self.config = metric, config or IndexConfig()
        data = self._prepare(vectors)
        n, dim = data.shape
        if n == 0:
            raise ValueError("cannot build an index over zero items")
        self.ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if self.ids.shape != (n,):
            raise ValueError(f"ids must have one entry per vector ({n}), got shape {self.ids.shape}")
        self.graph = n >= self.config.hnsw_threshold
        self._index = self._build(dim)
        if not self._index.is_trained:  # sq8 learns each dimension's range from the items themselves
            self._index.train(data)
        self._index.add(data)

    def _build(self, dim: int) -> faiss.Index:
        """The empty FAISS index of this kind and codec (inner product throughout)."""
        m, ip = self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT
        if self.config.codec == "sq8":
            index = (faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, m, ip) if self.graph
                     else faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, ip))
        else:
            index = faiss.IndexHNSWFlat(dim, m, ip) if self.graph else faiss.IndexFlatIP(dim)
        if self.graph:
            index.hnsw.efConstruction = self.config.ef_construction
        return index

    @property
    def kind(self) -> str:
        """``flat`` or ``hnsw``, with ``-sq8`` for int8 codes: what ``/version`` shows as the index."""
        return ("hnsw" if self.graph else "flat") + ("-sq8" if self.config.codec == "sq8" else "")

    def bytes_per_item(self) -> float:
        """The index's serialized size over its items: codes plus, for HNSW, the graph's links."""
        return float(faiss.serialize_index(self._index).nbytes) / len(self)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def _prepare(self, vectors: Tensor | np.ndarray) -> np.ndarray:
        """float32 C-contiguous ``[., D]`` numpy (what FAISS takes), unit length for cosine."""
        if isinstance(vectors, Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if data.ndim != 2:
            raise ValueError(f"expected a [rows, D] matrix, got shape {data.shape}")
        if self.metric == "cosine":
            data = data.copy()
            faiss.normalize_L2(data)
        return data

    def search(self, queries: Tensor | np.ndarray, k: int) -> tuple[Tensor, Tensor]:
        """``queries [B, D] -> (scores [B, K] float32, ids [B, K] int64)``, best first, ``K = min(k, N)``.

        Scores are inner products (cosines for ``cosine``). A slot HNSW could not fill holds id -1
        and score ``-inf``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        data = self._prepare(queries)
        if data.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {data.shape[1]}, the index {self.dim}")
        k = min(k, len(self))
        if self.graph:
            params = faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
            scores, rows = self._index.search(data, k, params=params)
        else:
            scores, rows = self._index.search(data, k)
        missing = rows < 0
        ids = np.where(missing, -1, self.ids[np.maximum(rows, 0)])
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def __repr__(self) -> str:
        return f"ItemIndex(kind={self.kind}, n={len(self)}, dim={self.dim}, metric={self.metric})"
