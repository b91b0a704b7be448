"""Re-ranking a retriever's candidates with a fine-tuned LLM, and loading such a run.

The re-ranked list (full-ranking protocol): the retriever's top ``R`` candidates re-ordered by
``llm_score + w * retriever_logit``, then every item below ``R`` in the retriever's order. A target
among the candidates is ranked by the combined score (ties count against the model, as in
``evaluation.ranking``); a target outside them keeps its retriever rank, which is ``>= R`` so the
``R`` candidates stay ahead of it. ``w`` is chosen on validation from a small grid that includes 0
(the LLM alone).

``LLMReranker`` is what the pipeline, the server and distillation use. This module imports no
training code (a server never loads ``seekrec.training``); transformers and peft are imported when a
run is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.evaluation import metrics
from seekrec.io import atomic_write_json
from seekrec.llm.models import KINDS, SCORES
from seekrec.llm.prompts import History, ItemTexts, PromptBuilder, PromptConfig

log = logging.getLogger(__name__)

LLM_FILE = "llm.json"
ADAPTER_DIR = "adapter"
FULL_DIR = "model"
ITEMS_FILE = "items.json"
FORMAT_VERSION = 1
WEIGHTS = ("adapter", "full")
RANK_K = 10


# -- the re-ranked list ------------------------------------------------------------------------
def combined_scores(llm_scores: np.ndarray, retrieval_logits: np.ndarray, weight: float) -> np.ndarray:
    """``[..., R]`` ``llm_score + weight * retriever_logit``; ValueError on NaN or mismatched shapes."""
    llm_scores = np.asarray(llm_scores, dtype=np.float64)
    retrieval_logits = np.asarray(retrieval_logits, dtype=np.float64)
    if llm_scores.shape != retrieval_logits.shape:
        raise ValueError(f"llm scores {llm_scores.shape} and retrieval logits {retrieval_logits.shape} differ in shape")
    if np.isnan(llm_scores).any():
        raise ValueError("the LLM produced NaN scores; check the run's weights and the prompt inputs")
    return llm_scores + weight * retrieval_logits


def reranked_ranks(llm_scores: np.ndarray, retrieval_logits: np.ndarray, target_positions: np.ndarray,
                   retriever_ranks: np.ndarray, weight: float) -> np.ndarray:
    """``[M]`` 0-based rank of each target in the re-ranked full list.

    ``llm_scores``, ``retrieval_logits`` ``[M, R]``: the candidates of ``M`` requests, retriever's best
    first; ``target_positions [M]``: the target's column among them, -1 when it is not a candidate;
    ``retriever_ranks [M]``: the target's rank by the retriever alone (used when it is not a candidate).
    """
    combined = combined_scores(llm_scores, retrieval_logits, weight)  # [M, R]
    target_positions = np.asarray(target_positions, dtype=np.int64)
    retriever_ranks = np.asarray(retriever_ranks, dtype=np.int64)
    inside = target_positions >= 0
    rows = np.arange(len(combined))
    target = combined[rows, np.where(inside, target_positions, 0)]  # [M]
    higher_or_tied = (combined >= target[:, None]).sum(axis=1) - 1  # minus the target itself
    return np.where(inside, higher_or_tied, retriever_ranks)


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """NDCG@10, HR@10 and MRR of 0-based ranks (``evaluation.metrics``)."""
    return {f"ndcg@{RANK_K}": metrics.ndcg(ranks, RANK_K), f"hr@{RANK_K}": metrics.hit_rate(ranks, RANK_K),
            "mrr": metrics.mrr(ranks)}


def per_user_ndcg(ranks: np.ndarray, k: int = RANK_K) -> np.ndarray:
    """``[M]`` each request's NDCG@k (``1 / log2(rank + 2)`` inside the top k), for paired comparisons."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def choose_weight(llm_scores: np.ndarray, retrieval_logits: np.ndarray, target_positions: np.ndarray,
                  retriever_ranks: np.ndarray, grid: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The ``w`` of ``grid`` with the best NDCG@10 of the re-ranked list, and every ``w``'s NDCG@10.

    Call it on validation requests only. Ties go to the earlier (by convention smaller) weight in ``grid``.
    """
    if not grid:
        raise ValueError("the weight grid is empty; give at least one weight (0 = the LLM alone)")
    by_weight = {float(w): metrics.ndcg(reranked_ranks(llm_scores, retrieval_logits, target_positions,
                                                       retriever_ranks, float(w)), RANK_K) for w in grid}
    best = max(by_weight, key=lambda w: (by_weight[w], -list(by_weight).index(w)))
    return best, by_weight


def score_requests(score: Callable[[History, np.ndarray], np.ndarray], histories: Sequence[History],
                   candidates: np.ndarray) -> np.ndarray:
    """``[M, R]`` LLM scores of each request's candidates, one ``score(history, items [R])`` call each."""
    out = np.empty(candidates.shape, dtype=np.float32)
    for m, history in enumerate(histories):
        out[m] = score(history, candidates[m])
    return out


# -- the run's llm.json -----------------------------------------------------------------------
@dataclass(frozen=True)
class LLMRunInfo:
    """``llm.json``: what loading a fine-tuned ranker needs.

    ``base_model``: the model the run started from (a directory or a hub name); ``weights``: ``adapter``
    (LoRA, in ``adapter/``) or ``full`` (the whole fine-tuned model in ``model/``, base not needed);
    ``prompt``: the ``PromptConfig`` as a dict; ``weight``: the chosen ``w``; ``retriever_run``: the
    candidate generator the run was trained and evaluated with.
    """

    base_model: str
    kind: str
    weights: str
    prompt: dict[str, Any]
    weight: float
    n_candidates: int
    n_items: int
    retriever_run: str
    task: str
    lora: dict[str, Any] | None = None
    data_manifest_sha256: str | None = None  # the dataset it was trained on
    score: str = "answer"  # a causal model's score: "answer" (Yes vs No) or "likelihood" (runs before it: answer)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"llm.json: kind {self.kind!r} must be one of {KINDS}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"llm.json: weights {self.weights!r} must be one of {WEIGHTS}")
        if self.score not in SCORES:
            raise ValueError(f"llm.json: score {self.score!r} must be one of {SCORES}")

    def write(self, run: str | Path) -> None:
        atomic_write_json(Path(run) / LLM_FILE, dataclasses.asdict(self))

    @classmethod
    def read(cls, run: str | Path) -> LLMRunInfo:
        """``run/llm.json``; FileNotFoundError / ValueError naming the run and what to do."""
        run = Path(run)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such LLM run directory; fine-tune one with `seekrec llm finetune`")
        path = run / LLM_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; {run} is not a finished `seekrec llm finetune` run "
                                    "(llm.json is written when fine-tuning ends)")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        optional = ("lora", "data_manifest_sha256", "format_version", "score")
        missing = sorted(n for n in names - set(doc) if n not in optional)
        if missing:
            raise ValueError(f"{path}: no {missing[0]!r} field; was it written by `seekrec llm finetune`?")
        return cls(**{k: v for k, v in doc.items() if k in names})


def write_item_texts(run: str | Path, texts: ItemTexts) -> None:
    """``items.json``: the titles, years and genres of items ``1..N`` the run's prompts rendered (a server
    has no dataset to read them from)."""
    atomic_write_json(Path(run) / ITEMS_FILE, {"titles": texts.titles, "years": texts.years, "genres": texts.genres})


def read_item_texts(run: str | Path) -> ItemTexts:
    path = Path(run) / ITEMS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the run is incomplete, fine-tune it again")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return ItemTexts(doc["titles"], doc["years"], doc["genres"])


# -- loading and applying a run ---------------------------------------------------------------
class LLMReranker:
    """A fine-tuned LLM ranker with its prompt builder and chosen weight ``w``.

    ``scores(history, items)`` are the LLM's scores (one shared prefix forward per request);
    ``rerank(history, items, retrieval_logits)`` orders the retriever's candidates by
    ``score + w * logit``, ties keeping the retriever's order.
    """

    def __init__(self, ranker: torch.nn.Module, info: LLMRunInfo, device: str | torch.device = "cpu") -> None:
        self.ranker, self.info, self.device = ranker, info, torch.device(device)

    @property
    def weight(self) -> float:
        return float(self.info.weight)

    @property
    def n_candidates(self) -> int:
        return int(self.info.n_candidates)

    @property
    def n_items(self) -> int:
        """Items ``1..N`` the run has texts for; later items cannot be scored."""
        return int(self.info.n_items)

    @property
    def prompt(self) -> PromptConfig:
        """The prompt config its builder uses (serving refuses ``prompt.needs_context``)."""
        return PromptConfig(**self.info.prompt)

    @classmethod
    def load(cls, run: str | Path, *, device: str | torch.device = "cpu", merge: bool = True,
             model: str | Path | None = None) -> LLMReranker:
        """The ranker of a finished fine-tuning run, on ``device`` in eval mode.

        ``merge``: fold a LoRA adapter into the base weights (faster inference, no peft at run time);
        ``model``: where the base model is now, overriding ``llm.json``'s ``base_model`` (``--model``).
        """
        from seekrec.llm.models import load_adapter, load_llm, merge_adapter
        from seekrec.llm.scoring import build_ranker

        run = Path(run)
        info = LLMRunInfo.read(run)
        if info.weights == "full":
            source: str | Path = run / FULL_DIR
            if not Path(source).is_dir():
                raise FileNotFoundError(f"{source}: missing; the run's fine-tuned model is not there")
        else:
            source = model if model is not None else info.base_model
        try:
            base, tokenizer = load_llm(source, info.kind)
        except (OSError, ValueError) as exc:
            hint = "" if info.weights == "full" else " (pass --model PATH to say where the base model is now)"
            raise FileNotFoundError(f"{run / LLM_FILE}: base model {str(source)!r} cannot be loaded: {exc}{hint}") \
                from exc
        if info.weights == "adapter":
            adapter = run / ADAPTER_DIR
            if not adapter.is_dir():
                raise FileNotFoundError(f"{adapter}: missing; the run's LoRA adapter is not there")
            base = load_adapter(base, adapter)
            if merge:
                base = merge_adapter(base)
        texts = read_item_texts(run)
        if texts.n_items != info.n_items:
            raise ValueError(f"{run / ITEMS_FILE}: {texts.n_items} items but llm.json says {info.n_items}")
        builder = PromptBuilder(tokenizer, texts, PromptConfig(**info.prompt))
        ranker = build_ranker(base, tokenizer, builder, info.kind, info.score).to(device).eval()
        ranker.requires_grad_(False)
        log.info("loaded LLM ranker %s (%s, %s score, %s weights, w=%.3g)", run, info.kind, info.score, info.weights,
                 info.weight)
        return cls(ranker, info, device)

    def export(self, out: str | Path) -> Path:
        """A self-contained run in ``out`` that ``load(out)`` reads with nothing else on disk: the model
        with any adapter merged (``model/``, weights="full") with its tokenizer, ``items.json`` and
        ``llm.json``. A reranker loaded with ``merge=False`` has its adapter merged in place first."""
        from seekrec.llm.models import merge_adapter

        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out}: exists and is not empty; export into a new directory")
        if hasattr(self.ranker.model, "peft_config"):
            self.ranker.model = merge_adapter(self.ranker.model)
        save_pretrained(self.ranker.model, self.ranker.tokenizer, out / FULL_DIR)
        write_item_texts(out, self.ranker.builder.items)
        dataclasses.replace(self.info, weights="full").write(out)
        return out

    def scores(self, history: History, items: np.ndarray) -> np.ndarray:
        """``[K]`` LLM scores of ``items`` after ``history`` (float32)."""
        items = np.asarray(items, dtype=np.int64)
        if items.size == 0:
            return np.zeros(0, dtype=np.float32)
        bad = (items < 1) | (items > self.info.n_items)
        if bad.any():
            raise ValueError(f"item id {int(items[bad][0])} is outside 1..{self.info.n_items} (the run's catalog)")
        with torch.inference_mode():
            out = self.ranker.score(history, items.tolist())
        return out.float().cpu().numpy()

    def rerank(self, history: History, items: np.ndarray,
               retrieval_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items [K]`` (retriever's best first) re-ordered best first, with their combined scores ``[K]``."""
        items = np.asarray(items, dtype=np.int64)
        combined = combined_scores(self.scores(history, items), retrieval_logits, self.weight)
        order = np.argsort(-combined, kind="stable")  # ties keep the retriever's order
        return items[order], combined[order]


def save_pretrained(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    """A model and its tokenizer as a Hugging Face directory (safetensors), built beside ``out`` and
    renamed into place so a killed process never leaves half of one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
