"""``seekrec llm finetune``: fine-tune a language model as a ranker of a retriever's candidates.

config -> data and the retriever's candidates (``llm.examples``) -> the ranker (``llm.models`` +
``llm.scoring``, LoRA or full fine-tuning) -> the project's ``Trainer`` (AMP, accumulation, activation
checkpointing, early stopping, exact resume) on ``llm.tasks`` -> ``w`` chosen on validation -> test
scored once -> the run directory::

    run/
      config.json            the config as run (+ data manifest sha256)
      llm.json               what LLMReranker.load needs (llm.rerank.LLMRunInfo)
      items.json             the item texts the prompts rendered
      adapter/               the LoRA adapter (peft, safetensors)   | model/  the fully fine-tuned model
      metrics.jsonl          train / valid / test records; curves.png their plot
      checkpoints/, best/    the trainer's resumable checkpoints and best validation weights
      results.json           parameters, step time, memory, valid and test metrics
      ranks.npz              per-request ranks and NDCG@10 (retriever alone, re-ranked), valid and test

Validation during training scores ``valid_users`` requests (0: all) and reports the re-ranked list's
NDCG@10 at the best ``w`` of the grid (``ndcg@10``), the LLM alone (``ndcg@10_llm``) and, among the
requests whose target is a candidate, AUC / gAUC of the LLM's scores (logloss for ``pointwise``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.config import load_config
from seekrec.data.schema import read_manifest
from seekrec.evaluation import ctr
from seekrec.io import sha256_file
from seekrec.llm.examples import (
    Requests,
    Retriever,
    UserEvents,
    eval_requests,
    load_events,
    popularity,
    training_requests,
)
from seekrec.llm.models import KINDS, SCORES, LoraSettings, apply_lora, load_llm, parameter_counts, save_adapter
from seekrec.llm.prompts import ItemTexts, PromptBuilder, PromptConfig
from seekrec.llm.rerank import (
    ADAPTER_DIR,
    FULL_DIR,
    LLMReranker,
    LLMRunInfo,
    choose_weight,
    per_user_ndcg,
    ranking_metrics,
    reranked_ranks,
    save_pretrained,
    score_requests,
    write_item_texts,
)
from seekrec.llm.scoring import build_ranker
from seekrec.llm.tasks import NEGATIVES, RequestEpochs, TaskSettings, build_task
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, init_distributed, shutdown
from seekrec.training.run_dir import RunDir
from seekrec.training.trainer import Trainer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RANKS_FILE = "ranks.npz"


@dataclass
class ModelSource:
    """TOML ``[model]``: the backbone. ``path``: a pretrain run's ``model/``, ``minilm``, any Hugging Face
    model directory (or a cached hub name); ``kind``: ``causal`` (a language model) or ``cross_encoder`` (a
    one-output sequence classifier); ``score`` of a causal model: ``answer`` (" Yes" vs " No" logits after a
    question) or ``likelihood`` (log p of the item's history line after the history: the pretrained LM is
    already a ranker); ``dtype`` of its weights."""

    path: str
    kind: str = "causal"
    score: str = "answer"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not str(self.path).strip():
            raise ValueError("model.path is empty: give a model directory, 'minilm' or a hub name")
        if self.kind not in KINDS:
            raise ValueError(f"model.kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.score not in SCORES:
            raise ValueError(f"model.score must be one of {SCORES}, got {self.score!r}")
        if self.score == "likelihood" and self.kind != "causal":
            raise ValueError("model.score = 'likelihood' needs a language model: set model.kind = 'causal'")


def _default_train() -> TrainConfig:
    return TrainConfig(lr=2e-4, batch_size=8, max_epochs=3, warmup_steps=10, patience=2, eval_batch_size=1)


@dataclass
class FinetuneConfig:
    """Everything ``seekrec llm finetune`` needs (TOML, ``key=value`` overrides).

    ``task``: ``rerank`` (softmax over 1 positive + ``n_negatives``) or ``pointwise`` (BCE; ``label`` =
    ``click``: positive vs retriever negatives, or ``like``: rating >= ``like_threshold``);
    ``negatives``: drawn from the retriever's top ``n_candidates`` of the prefix, or by popularity;
    ``positions_per_user``: training requests per user (its last training positions); ``weights``: the
    grid ``w`` is chosen from on validation (0: the LLM alone); ``valid_users``: requests validated
    during training (0: all; the final choice of ``w`` always uses all); ``full``: fine-tune every
    weight instead of LoRA adapters.
    """

    model: ModelSource
    retriever_run: str
    name: str = "llm-rerank"
    data: str | None = None
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    full: bool = False
    task: str = "rerank"
    label: str = "click"
    like_threshold: float = 4.0
    negatives: str = "retriever"
    n_candidates: int = 50
    n_negatives: int = 7
    positions_per_user: int = 4
    weights: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
    valid_users: int = 0
    train: TrainConfig = field(default_factory=_default_train)

    def __post_init__(self) -> None:
        self.weights = tuple(float(w) for w in self.weights)
        if not self.weights or not all(np.isfinite(self.weights)):
            raise ValueError(f"weights must be a non-empty list of finite numbers, got {list(self.weights)}")
        if self.n_candidates < 1 or self.positions_per_user < 1 or self.valid_users < 0:
            raise ValueError("n_candidates and positions_per_user must be >= 1, valid_users >= 0")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        _ = self.settings  # validates task, label and n_negatives
        if self.model.score == "likelihood" and self.task != "rerank":
            raise ValueError("model.score = 'likelihood' gives log-probabilities, not click logits: use task = "
                             "'rerank' (or model.score = 'answer' for the pointwise task)")

    @property
    def settings(self) -> TaskSettings:
        return TaskSettings(self.task, self.label, self.n_negatives, self.negatives, self.like_threshold)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
             values: dict[str, Any] | None = None) -> FinetuneConfig:
        """TOML ``path`` (or defaults), then ``values`` (command-line flags), then ``key=value`` overrides."""
        return load_config(cls, path, overrides, values=values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- scoring and metrics of requests ---------------------------------------------------------------
def llm_scores(ranker: torch.nn.Module, events: UserEvents, requests: Requests) -> np.ndarray:
    """``[M, R]`` the ranker's scores of every request's candidates (prefix-shared ``score``)."""
    return score_requests(lambda history, items: ranker.score(history, items.tolist()).float().numpy(),
                          requests.histories(events), requests.candidates)


def candidate_ctr(scores: np.ndarray, requests: Requests, *, probabilities: bool) -> dict[str, float]:
    """AUC / gAUC (and logloss of ``sigmoid(score)`` when ``probabilities``) of the LLM's scores over the
    candidates of the requests whose target is among them (target 1, the rest 0); {} when none is."""
    inside = np.flatnonzero(requests.target_positions >= 0)
    if len(inside) == 0 or requests.n_candidates < 2:
        return {}
    labels = np.zeros((len(inside), requests.n_candidates))
    labels[np.arange(len(inside)), requests.target_positions[inside]] = 1.0
    values = scores[inside]
    users = np.repeat(requests.users[inside], requests.n_candidates)
    out = {"auc": ctr.auc(labels.ravel(), values.ravel()), "gauc": ctr.gauc(users, labels.ravel(), values.ravel())}
    if probabilities:
        out["logloss"] = ctr.logloss(labels.ravel(), 1.0 / (1.0 + np.exp(-values.ravel())))
    return out


def like_ctr(ranker: torch.nn.Module, events: UserEvents, requests: Requests, threshold: float) -> dict[str, float]:
    """AUC and logloss of the LLM's score of each request's target against ``rating >= threshold``
    ({} when the labels hold one class only)."""
    histories = requests.histories(events)
    labels = np.array([events.value_at(int(u), int(n)) >= threshold for u, n in zip(requests.users, requests.lengths)],
                      dtype=np.float64)
    if labels.min() == labels.max():
        return {}
    scores = np.array([float(ranker.score(h, [int(t)])[0]) for h, t in zip(histories, requests.targets)])
    return {"like_auc": ctr.auc(labels, scores), "like_logloss": ctr.logloss(labels, 1.0 / (1.0 + np.exp(-scores)))}


def request_metrics(scores: np.ndarray, requests: Requests, weight: float, settings: TaskSettings) -> dict[str, float]:
    """The re-ranked list's NDCG@10 / HR@10 / MRR at ``weight``, the LLM alone's NDCG@10 and the CTR metrics."""
    args = (scores, requests.logits, requests.target_positions, requests.retriever_ranks)
    out = {**ranking_metrics(reranked_ranks(*args, weight)), "w": weight,
           "ndcg@10_llm": ranking_metrics(reranked_ranks(*args, 0.0))["ndcg@10"]}
    out.update(candidate_ctr(scores, requests, probabilities=settings.task == "pointwise"))
    return out


class Validation:
    """The trainer's validation: score the requests, choose ``w`` on them, report ``request_metrics``."""

    def __init__(self, ranker: torch.nn.Module, events: UserEvents, requests: Requests, config: FinetuneConfig) -> None:
        self.ranker, self.events, self.requests, self.config = ranker, events, requests, config

    def __call__(self) -> dict[str, float]:
        scores = llm_scores(self.ranker, self.events, self.requests)
        weight, _ = choose_weight(scores, self.requests.logits, self.requests.target_positions,
                                  self.requests.retriever_ranks, self.config.weights)
        out = request_metrics(scores, self.requests, weight, self.config.settings)
        if self.config.settings.likes:
            out.update(like_ctr(self.ranker, self.events, self.requests, self.config.like_threshold))
        return out


# -- the run ---------------------------------------------------------------------------------------
def finetune(config: FinetuneConfig, data_dir: str | Path | None, out: str | Path, *, resume: bool = True) -> dict:
    """Fine-tune, choose ``w`` on validation, score test once; write the run ``out``; return results.json.

    ``resume``: continue from ``out/checkpoints`` when it holds one (exactly, batch for batch). Under torchrun
    every rank trains its share of each global batch (``train.strategy``: "ddp" replicates the model, "fsdp"
    shards it by decoder layer); rank 0 validates, scores test, writes the run and returns the record (the
    other ranks return ``{}``)."""
    start, rss0 = time.perf_counter(), _max_rss_mb()
    data_dir = data_dir if data_dir is not None else config.data
    if data_dir is None:
        raise ValueError("no dataset: pass --data DIR or set data in the config")
    ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    try:
        return _finetune(config, Path(data_dir), Path(out), ctx, resume=resume, start=start, rss0=rss0)
    finally:
        shutdown(ctx)


def _ranker(config: FinetuneConfig, data: Any) -> tuple[torch.nn.Module, Any, ItemTexts]:
    """The ranker to train (LoRA adapters on the backbone, or every weight trainable), its tokenizer and items."""
    model, tokenizer = load_llm(config.model.path, config.model.kind, dtype=DTYPES[config.model.dtype])
    items = ItemTexts.from_data(data)
    builder = PromptBuilder(tokenizer, items, config.prompt)
    if config.full:
        model.requires_grad_(True)
    else:
        model = apply_lora(model, config.lora, config.model.kind)
    return build_ranker(model, tokenizer, builder, config.model.kind, config.model.score), tokenizer, items


def _finetune(config: FinetuneConfig, data_dir: Path, out: Path, ctx: DistContext, *, resume: bool, start: float,
              rss0: float) -> dict:
    run, device = RunDir(out), ctx.device
    torch.manual_seed(config.train.seed)
    data, events, split = load_events(data_dir)
    retriever = Retriever.load(config.retriever_run, data.n_items, device=device)
    settings = config.settings
    train_requests = training_requests(events, split.train, retriever, config.n_candidates, config.positions_per_user)
    valid = eval_requests(events, split.valid, retriever, config.n_candidates)
    test = eval_requests(events, split.test, retriever, config.n_candidates)

    ranker, tokenizer, items = _ranker(config, data)
    counts = parameter_counts(ranker)
    manifest_sha = sha256_file(data_dir / "manifest.json")
    if ctx.is_main:
        run.write_config({**config.to_dict(), "data_manifest_sha256": manifest_sha,
                          "data_source": read_manifest(data_dir)["source"]})
    log.info("%s: %d training requests, %d valid, %d test; %d of %d parameters trainable (%.3f%%)", config.name,
             len(train_requests), len(valid), len(test), counts["trainable"], counts["total"], 100 * counts["fraction"])

    batches = RequestEpochs(train_requests, events, ranker.collate, settings, config.train, exclude=split.train,
                            popularity=popularity(split.train, data.n_items), rank=ctx.rank,
                            world_size=ctx.world_size)
    trainer = Trainer(ranker, build_task(settings), batches,
                      Validation(ranker, events, _subset(valid, config.valid_users, config.train.seed), config),
                      config.train, run_dir=run, ctx=ctx, manifest={"config": config.to_dict(),
                                                                    "data_manifest_sha256": manifest_sha},
                      resume=resume, validate_untrained=True)
    result = trainer.fit()
    if not ctx.is_main:
        return {}
    if trainer.parallel.sharded:  # this rank holds a shard: score and export a whole copy of the best weights
        del trainer
        ranker = run.load_best(_ranker(config, data)[0]).to(device).eval()

    # w on all validation requests, then the test requests scored once with it
    with torch.inference_mode():
        valid_scores = llm_scores(ranker, events, valid)
        weight, by_weight = choose_weight(valid_scores, valid.logits, valid.target_positions, valid.retriever_ranks,
                                          config.weights)
        test_scores = llm_scores(ranker, events, test)
        reports = {name: _report(scores, requests, weight, settings) for name, scores, requests
                   in (("valid", valid_scores, valid), ("test", test_scores, test))}
        if settings.likes:
            reports["valid"]["reranked"].update(like_ctr(ranker, events, valid, config.like_threshold))
            reports["test"]["reranked"].update(like_ctr(ranker, events, test, config.like_threshold))
    run.metrics_log.append({"kind": "test", "step": -1, **reports["test"]["reranked"]})
    _save_ranks(out / RANKS_FILE, {"valid": (valid_scores, valid), "test": (test_scores, test)}, weight)

    weights_kind = "full" if config.full else "adapter"
    if config.full:
        save_pretrained(ranker.model, tokenizer, out / FULL_DIR)
    else:
        save_adapter(ranker.model, out / ADAPTER_DIR)
    write_item_texts(out, items)
    LLMRunInfo(base_model=_base_path(config.model.path), kind=config.model.kind, score=config.model.score,
               weights=weights_kind,
               prompt=dataclasses.asdict(config.prompt), weight=weight, n_candidates=config.n_candidates,
               n_items=data.n_items, retriever_run=str(Path(config.retriever_run).resolve()), task=config.task,
               lora=None if config.full else dataclasses.asdict(config.lora),
               data_manifest_sha256=manifest_sha).write(out)
    run.plot()
    train_records = [r for r in run.metrics_log.read() if r["kind"] == "train"]
    record = {
        "name": config.name, "dataset": read_manifest(data_dir)["source"], "task": config.task,
        "label": config.label if config.task == "pointwise" else None, "kind": config.model.kind,
        "score": config.model.score,
        "base_model": _base_path(config.model.path), "weights": weights_kind, "parameters": counts,
        "weight": weight, "weight_grid": {str(w): round(v, 6) for w, v in by_weight.items()},
        "n_candidates": config.n_candidates, "n_negatives": config.n_negatives,
        "n_train_requests": len(train_requests), "n_valid": len(valid), "n_test": len(test),
        "valid": reports["valid"], "test": reports["test"], "best_valid": result.best_valid,
        "best_epoch": result.best_epoch, "best_step": result.best_step, "epochs": result.epochs_run,
        "steps": result.steps, "train_seconds": round(result.seconds, 2),
        "seconds_to_best": round(result.seconds_to_best, 2),
        "step_seconds": round(statistics.median(r["step_seconds"] for r in train_records), 4)
        if train_records else None,
        "pairs_per_second": round(result.examples_per_second, 2), "precision": config.train.precision,
        "world_size": ctx.world_size, "strategy": config.train.strategy,
        "memory": _memory(rss0, device), "device": str(device), "seconds": round(time.perf_counter() - start, 2),
    }
    run.write_results(record)
    return record


def _report(scores: np.ndarray, requests: Requests, weight: float, settings: TaskSettings) -> dict[str, Any]:
    return {"retriever": ranking_metrics(requests.retriever_ranks),
            "reranked": request_metrics(scores, requests, weight, settings),
            "target_in_candidates": float(np.mean(requests.target_positions >= 0))}


def _subset(requests: Requests, n: int, seed: int) -> Requests:
    """``n`` requests drawn once with ``seed`` (all when ``n`` is 0 or covers them), in their order."""
    if n == 0 or n >= len(requests):
        return requests
    return requests.subset(np.sort(np.random.default_rng(seed).choice(len(requests), n, replace=False)))


def _save_ranks(path: Path, splits: dict[str, tuple[np.ndarray, Requests]], weight: float) -> None:
    """Per-request ranks and NDCG@10 of the retriever alone and re-ranked (for paired differences), with the
    LLM scores, candidates, retriever logits and target positions that re-derive them for any ``w``."""
    arrays: dict[str, np.ndarray] = {"weight": np.array(weight)}
    for name, (scores, requests) in splits.items():
        ranks = reranked_ranks(scores, requests.logits, requests.target_positions, requests.retriever_ranks, weight)
        arrays.update({f"{name}_users": requests.users, f"{name}_retriever_ranks": requests.retriever_ranks,
                       f"{name}_reranked_ranks": ranks, f"{name}_retriever_ndcg": per_user_ndcg(requests.retriever_ranks),
                       f"{name}_reranked_ndcg": per_user_ndcg(ranks), f"{name}_llm_scores": scores,
                       f"{name}_candidates": requests.candidates, f"{name}_logits": requests.logits,
                       f"{name}_target_positions": requests.target_positions})
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".npz", delete=False) as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(fh.name, path)


def _base_path(path: str) -> str:
    """A local model directory as an absolute path (the run may be loaded from elsewhere); names as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.is_dir() else str(path)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _memory(rss_before_mb: float, device: torch.device) -> dict[str, float]:
    """Peak resident memory of the process, its growth during the run and (CUDA) peak allocated memory."""
    peak = _max_rss_mb()
    out = {"peak_rss_mb": round(peak, 1), "peak_rss_growth_mb": round(peak - rss_before_mb, 1)}
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


# -- evaluating a finished run ----------------------------------------------------------------------
def evaluate_run(run: str | Path, data_dir: str | Path, which: str = "test", *, device: str = "cpu",
                 model: str | Path | None = None, retriever_run: str | Path | None = None) -> dict[str, Any]:
    """A finished run's re-ranked metrics on ``which`` (valid or test) of a prepared dataset, with the weight it
    chose, through ``LLMReranker`` (the serving path; adapters merged)."""
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    reranker = LLMReranker.load(run, device=device, model=model)
    data, events, split = load_events(data_dir)
    if data.n_items != reranker.n_items:
        raise ValueError(f"{data_dir} has {data.n_items} items but the run {reranker.n_items}; evaluate on the dataset "
                         "it was trained on")
    retriever = Retriever.load(retriever_run or reranker.info.retriever_run, data.n_items, device=device)
    requests = eval_requests(events, split.eval_set(which), retriever, reranker.n_candidates)
    scores = score_requests(reranker.scores, requests.histories(events), requests.candidates)
    settings = TaskSettings(task=reranker.info.task)
    return {"run": str(run), "split": which, "weight": reranker.weight, "n_users": len(requests),
            **_report(scores, requests, reranker.weight, settings)}
