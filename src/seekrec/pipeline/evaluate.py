"""End-to-end evaluation: each retriever's recall, then the final pipeline list, beside single-stage models.

The users and targets are those of ``evaluation.ranking`` (the leave-one-out ``valid`` or ``test``
set). Retrieval recall@K is the full-ranking HR@K of each retriever over the whole catalogue (seen
items masked, as in ``evaluate``). The pipeline's list is what ``Pipeline.recommend`` returns for the
user's features and every item's features as of the target's time, with the visible history as
``seen``; its NDCG@10 / HR@10 count the target's position in that list, 0 when it is absent.
Stage settings are chosen on validation only (``select_stages``); test is scored once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.evaluation import metrics
from seekrec.evaluation.baselines import EASE
from seekrec.evaluation.tuning import fit_and_evaluate, grid_points
from seekrec.features.batch import FeatureBatch
from seekrec.features.examples import OfflineRows
from seekrec.models.layers.features import with_item_ids
from seekrec.pipeline.features import HeldOut, held_out
from seekrec.pipeline.pipeline import CandidateFeatures, Pipeline
from seekrec.pipeline.train import TwoTowerScorer, retrieval_metrics
from seekrec.training.trainer import ModelScorer

log = logging.getLogger(__name__)
LIST_K = 10


@dataclass
class EvalUsers:
    """One evaluation set prepared once: targets with times, offline rows, user features as of each target."""

    which: str
    held: HeldOut
    rows: OfflineRows
    user: FeatureBatch  # [M] rows, in ``held.users`` order

    @classmethod
    def build(cls, pipeline: Pipeline, data: InteractionData, split: Split, which: str) -> EvalUsers:
        held = held_out(data, split, which)
        rows = held.rows(pipeline.spec, data)
        return cls(which, held, rows, rows.features("user", held.users, held.as_of))


def offline_item_features(rows: OfflineRows, as_of: np.ndarray, n_items: int) -> CandidateFeatures:
    """Candidates' item rows as of each user's time (``as_of [B]``), from offline rows."""
    def fetch(ids: Tensor) -> FeatureBatch:
        flat = ids.flatten()
        known = torch.where(flat <= n_items, flat, torch.zeros_like(flat))  # items added later: unknown here
        times = np.repeat(np.asarray(as_of), ids.shape[1])
        return with_item_ids(rows.features("item", known.numpy(), times), known)

    return fetch


def list_positions(pipeline: Pipeline, users: EvalUsers, *, batch_size: int = 64,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(position [M], in_candidates [M])``: each target's 0-based position in its user's final list
    (-1 when absent) and whether retrieval found it."""
    held, n = users.held, pipeline.spec.n_items
    seen = held.seen()
    positions, found = [], []
    for lo in tqdm(range(0, len(held), batch_size), desc=f"pipeline {users.which}", unit="batch", disable=not progress,
                   leave=False):
        rows = torch.arange(lo, min(lo + batch_size, len(held)))
        recs = pipeline.recommend(users.user.index(rows), seen[lo:lo + len(rows)],
                                  item_features=offline_item_features(users.rows, held.as_of[rows.numpy()], n))
        targets = torch.from_numpy(held.targets[rows.numpy()])[:, None]
        hit = recs.ids == targets  # [B, K]
        positions.append(torch.where(hit.any(dim=1), hit.int().argmax(dim=1), -1).numpy())
        found.append((recs.candidates == targets).any(dim=1).numpy())
    return np.concatenate(positions), np.concatenate(found)


def list_metrics(positions: np.ndarray, in_candidates: np.ndarray, n_candidates: int,
                 k: int = LIST_K) -> dict[str, float]:
    """NDCG@k / HR@k of the final lists, their MRR and the retrieval stage's recall@R (after the seen filter)."""
    hit = positions >= 0
    ranks = np.where(hit, positions, np.iinfo(np.int32).max).astype(np.float64)  # absent: past any cut-off
    return {f"ndcg@{k}": metrics.ndcg(ranks, k), f"hr@{k}": metrics.hit_rate(ranks, k),
            "mrr": float(np.mean(np.where(hit, 1.0 / (positions + 1.0), 0.0))),
            f"candidate_recall@{n_candidates}": float(np.mean(in_candidates))}


def pipeline_metrics(pipeline: Pipeline, users: EvalUsers, *, batch_size: int = 64,
                     progress: bool = False) -> dict[str, float]:
    """The final list's metrics for ``pipeline`` with its current stage config."""
    positions, found = list_positions(pipeline, users, batch_size=batch_size, progress=progress)
    return list_metrics(positions, found, pipeline.stages.n_candidates, min(LIST_K, pipeline.stages.k))


def retriever_metrics(pipeline: Pipeline, users: EvalUsers, split: Split) -> dict[str, dict[str, float]]:
    """Full-ranking metrics (recall@100/500 included) of each retriever in the pipeline."""
    eval_set, n = split.eval_set(users.which), pipeline.spec.n_items
    catalogue = pipeline.catalogue.index(torch.arange(n + 1))
    with torch.inference_mode():
        scorer = TwoTowerScorer(pipeline.two_tower_model, pipeline.retriever.view, catalogue, users.user,
                                users.held.users)
        out = {"two_tower": retrieval_metrics(scorer, eval_set, n)}
        if pipeline.sequence is not None:
            sequence = ModelScorer(pipeline.sequence.model, pipeline.sequence.max_len)
            out["sasrec"] = retrieval_metrics(sequence, eval_set, n)
    return out


def select_stages(pipeline: Pipeline, valid: EvalUsers, grid: dict[str, list[Any]], *,
                  select_metric: str = "ndcg@10", batch_size: int = 64,
                  progress: bool = False) -> tuple[Pipeline, list[dict[str, Any]]]:
    """The pipeline with the stage settings of ``grid`` that score best on validation, and every point's
    validation metrics. ``grid``: ``StageConfig`` field -> values, e.g. ``{"n_candidates": [100, 200]}``."""
    if valid.which != "valid":
        raise ValueError("stage settings are chosen on the validation set only; pass EvalUsers of 'valid'")
    table, best, best_score = [], pipeline, -np.inf
    for point in grid_points(grid):
        candidate = pipeline.with_stages(dataclasses.replace(pipeline.stages, **point))
        scores = pipeline_metrics(candidate, valid, batch_size=batch_size, progress=progress)
        if select_metric not in scores:
            raise ValueError(f"select_metric {select_metric!r} is not a list metric; choose one of {sorted(scores)}")
        value = scores[select_metric]
        table.append({"stages": point, "valid": scores})
        log.info("validation %s: %s=%.4f", point, select_metric, value)
        if value > best_score:
            best, best_score = candidate, value
    return best, table


def evaluate_pipeline(pipeline: Pipeline, data: InteractionData, split: Split, which: str = "test", *,
                      grid: dict[str, list[Any]] | None = None, baselines: Sequence[str] = ("ease",),
                      batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """One report: retrieval recall of each retriever, the pipeline list with each retriever, and the
    single-stage models (the bundled SASRec's own ranking; EASE tuned on validation) on ``which``.

    With ``grid``, stage settings are first chosen on validation (per retriever) and ``which`` is
    scored with the chosen ones.
    """
    start = time.perf_counter()
    users = EvalUsers.build(pipeline, data, split, which)
    report: dict[str, Any] = {"split": which, "n_users": len(users.held), "n_items": pipeline.spec.n_items,
                              "retrieval": retriever_metrics(pipeline, users, split), "pipeline": {},
                              "single_stage": {}, "selection": {}}
    retrievers = ["two_tower"] + (["sasrec"] if pipeline.sequence is not None else [])
    valid = EvalUsers.build(pipeline, data, split, "valid") if grid else None
    for retriever in retrievers:
        variant = pipeline.with_stages(dataclasses.replace(pipeline.stages, retriever=retriever))
        if valid is not None and grid:
            variant, table = select_stages(variant, valid, grid, batch_size=batch_size, progress=progress)
            report["selection"][retriever] = {"chosen": variant.stages.to_dict(), "grid": table}
        report["pipeline"][retriever] = {
            "stages": variant.stages.to_dict(),
            **pipeline_metrics(variant, users, batch_size=batch_size, progress=progress),
        }
    if "sasrec" in report["retrieval"]:
        report["single_stage"]["sasrec"] = report["retrieval"]["sasrec"]
    if "ease" in baselines:
        tuned = fit_and_evaluate(EASE, split, which, pipeline.spec.n_items, grid=EASE.grid)
        report["single_stage"]["ease"] = {**tuned.result.metrics, "params": tuned.params}
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report
