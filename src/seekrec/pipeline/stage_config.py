"""``StageConfig``: what a loaded pipeline runs with (retriever, R, K, re-ranking).

It travels in the bundle, so it lives apart from the training configuration in ``config.py``:
loading a bundle to serve it must not import any training code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

RETRIEVERS = ("two_tower", "sasrec")
RERANKERS = ("din", "llm")
DIVERSITY_KINDS = ("none", "max_per_genre", "mmr")


@dataclass
class StageConfig:
    """How a loaded pipeline turns a user into K items.

    ``retriever``: "two_tower" (user tower against a FAISS index of item-tower vectors) or "sasrec"
    (the bundled sequence model against its item table). ``n_candidates`` (R) go to the DIN ranker,
    whose calibrated probabilities order them; re-ranking drops seen items (``filter_seen``) and
    duplicates, then applies ``diversity``: "max_per_genre" admits an item only while each of its
    genres has fewer than ``max_per_genre`` items in the list, "mmr" picks greedily by ``mmr_lambda *
    probability - (1 - mmr_lambda) * max genre-Jaccard to the items already picked``. ``genre_column``
    names the item categorical column diversity reads. ``retrieval_weight`` (w): candidates are ordered
    by ``sigmoid(ranker log-odds + w * retrieval logit)``, a product of the two models' evidence; 0
    (default) orders by the calibrated DIN probability alone. Returned scores are always the DIN's
    calibrated click probabilities.

    ``reranker``: what scores the R candidates: "din" (above) or "llm", a fine-tuned language model
    (``seekrec.llm``) that reads the user's history and each candidate as text; its scores
    (``logit(" Yes") - logit(" No")``) then take the DIN log-odds' place in the order above (with the
    same ``retrieval_weight``) and the returned scores are their sigmoid, not calibrated probabilities.
    ``llm_run``: the fine-tuned LLM run directory (``llm.json``); set without ``reranker = "llm"`` it is
    loaded too, so evaluation reports it beside DIN. ``llm_device``: where the LLM runs.
    """

    retriever: str = "two_tower"
    n_candidates: int = 200
    k: int = 10
    filter_seen: bool = True
    diversity: str = "none"
    max_per_genre: int = 3
    mmr_lambda: float = 0.7
    genre_column: str = "genres"
    retrieval_weight: float = 0.0
    reranker: str = "din"
    llm_run: str | None = None
    llm_device: str = "cpu"

    def __post_init__(self) -> None:
        if self.retriever not in RETRIEVERS:
            raise ValueError(f"stages.retriever must be one of {RETRIEVERS}, got {self.retriever!r}")
        if self.reranker not in RERANKERS:
            raise ValueError(f"stages.reranker must be one of {RERANKERS}, got {self.reranker!r}")
        if self.reranker == "llm" and not self.llm_run:
            raise ValueError("stages.reranker = 'llm' needs stages.llm_run = a fine-tuned LLM run directory "
                             "(`seekrec llm finetune --out DIR`)")
        if self.llm_run is not None:
            self.llm_run = str(self.llm_run)
        if self.k < 1 or self.n_candidates < self.k:
            raise ValueError(f"stages need 1 <= k <= n_candidates, got k={self.k}, n_candidates={self.n_candidates}; "
                             "raise n_candidates or lower k")
        if self.diversity not in DIVERSITY_KINDS:
            raise ValueError(f"stages.diversity must be one of {DIVERSITY_KINDS}, got {self.diversity!r}")
        if self.max_per_genre < 1:
            raise ValueError(f"stages.max_per_genre must be >= 1, got {self.max_per_genre}")
        if not self.retrieval_weight >= 0.0:
            raise ValueError(f"stages.retrieval_weight must be >= 0 (0: the ranker alone), got {self.retrieval_weight}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"stages.mmr_lambda must lie in [0, 1] (1 = no diversity), got {self.mmr_lambda}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
