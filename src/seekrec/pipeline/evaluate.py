"""End-to-end evaluation: each retriever's recall, then the final pipeline list, beside single-stage models.

The users and targets are those of ``evaluation.ranking`` (the leave-one-out ``valid`` or ``test``
set). Retrieval recall@K is the full-ranking HR@K of each retriever over the whole catalog (seen
items masked, as in ``evaluate``). The pipeline's list is what ``Pipeline.recommend`` returns for the
user's features and every item's features as of the target's time, with the visible history as
``seen``; its NDCG@10 / HR@10 count the target's position in that list, 0 when it is absent.
Stage settings are chosen on validation only (``select_stages``); test is scored once.

With an LLM stage (``stages.llm_run``), each retriever's list is also reported re-ranked by the LLM
(``<retriever>->llm``), from each user's visible history with its ratings and times.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.evaluation import metrics
from seekrec.evaluation.baselines import EASE
from seekrec.evaluation.ranking import ModelScorer
from seekrec.evaluation.tuning import fit_and_evaluate, grid_points
from seekrec.features.batch import FeatureBatch
from seekrec.features.examples import OfflineRows
from seekrec.models.layers.features import with_item_ids
from seekrec.pipeline.features import HeldOut, held_out
from seekrec.pipeline.llm_stage import eval_histories
from seekrec.pipeline.pipeline import CandidateFeatures, Pipeline
from seekrec.pipeline.stage_config import StageConfig
from seekrec.pipeline.train_two_tower import TwoTowerScorer, retrieval_metrics

if TYPE_CHECKING:
    from seekrec.llm.prompts import History

log = logging.getLogger(__name__)
LIST_K = 10
# what --tune searches on validation: how many candidates, and how much the retrieval score weighs in the order
STAGE_GRID: dict[str, list[Any]] = {"n_candidates": [20, 50, 100, 200, 400],
                                    "retrieval_weight": [0.0, 0.25, 0.5, 1.0, 2.0]}


@dataclass
class EvalUsers:
    """One evaluation set prepared once: targets with times, offline rows, user features as of each target
    and, for a pipeline with an LLM stage, each user's history as the LLM reads it."""

    which: str
    held: HeldOut
    rows: OfflineRows
    user: FeatureBatch  # [M] rows, in ``held.users`` order
    histories: list[History] | None = None  # [M], in ``held.users`` order

    @classmethod
    def build(cls, pipeline: Pipeline, data: InteractionData, split: Split, which: str) -> EvalUsers:
        held = held_out(data, split, which)
        rows = held.rows(pipeline.spec, data)
        histories = eval_histories(data, held) if pipeline.llm is not None else None
        return cls(which, held, rows, rows.features("user", held.users, held.as_of), histories)

    def history_rows(self, lo: int, hi: int) -> list[History] | None:
        """The histories of users ``lo..hi - 1`` (None without an LLM stage)."""
        return None if self.histories is None else self.histories[lo:hi]


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
    (-1 when absent) and whether retrieval found it, through ``Pipeline.recommend`` itself (the
    reference that ``score_candidates`` + ``final_positions`` must equal)."""
    held, n = users.held, pipeline.spec.n_items
    seen = held.seen()
    positions, found = [], []
    for lo in tqdm(range(0, len(held), batch_size), desc=f"pipeline {users.which}", unit="batch", disable=not progress,
                   leave=False):
        rows = torch.arange(lo, min(lo + batch_size, len(held)))
        recs = pipeline.recommend(users.user.index(rows), seen[lo:lo + len(rows)],
                                  item_features=offline_item_features(users.rows, held.as_of[rows.numpy()], n),
                                  histories=users.history_rows(lo, lo + len(rows)))
        targets = torch.from_numpy(held.targets[rows.numpy()])[:, None]
        positions.append(_position(recs.ids, targets))
        found.append((recs.candidates == targets).any(dim=1).numpy())
    return np.concatenate(positions), np.concatenate(found)


@dataclass
class ScoredCandidates:
    """The first two stages' outputs for a whole evaluation set at R candidates per user. The ranker scores
    each candidate on its own and the top R' < R of a search are its first R', so every setting with
    at most R candidates (and any re-ranking) is evaluated from these without scoring again."""

    candidates: Tensor  # [M, R] ids, best retrieval score first
    retrieval: Tensor  # [M, R] retrieval logits
    ranker: Tensor  # [M, R] calibrated DIN log-odds (LLM scores with reranker = "llm")
    exclude: Tensor  # [M, N' + 1] seen items


def score_candidates(pipeline: Pipeline, users: EvalUsers, n_candidates: int, *, batch_size: int = 64,
                     progress: bool = False) -> ScoredCandidates:
    """Retrieve ``n_candidates`` per user and rank them, item rows as of each user's target time."""
    held, n = users.held, pipeline.spec.n_items
    seen = held.seen()
    parts: list[tuple[Tensor, ...]] = []
    for lo in tqdm(range(0, len(held), batch_size), desc=f"score {users.which}", unit="batch", disable=not progress,
                   leave=False):
        rows = torch.arange(lo, min(lo + batch_size, len(held)))
        user = users.user.index(rows)
        exclude = pipeline.exclusions(seen[lo:lo + len(rows)])
        candidates, retrieval = pipeline.retrieve(user, exclude, n_candidates)
        ranker = pipeline.rank(user, candidates, offline_item_features(users.rows, held.as_of[rows.numpy()], n),
                               histories=users.history_rows(lo, lo + len(rows)))
        parts.append((candidates, retrieval, ranker, exclude))
    return ScoredCandidates(*(torch.cat(column) for column in zip(*parts, strict=True)))


def final_positions(pipeline: Pipeline, scored: ScoredCandidates, users: EvalUsers, *,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``list_positions`` of ``pipeline``'s stage settings, from candidates scored once."""
    r = pipeline.stages.n_candidates
    if r > scored.candidates.shape[1]:
        raise ValueError(f"stages.n_candidates={r} but only {scored.candidates.shape[1]} candidates were scored")
    targets = torch.from_numpy(users.held.targets)[:, None]
    positions, found = [], []
    for lo in range(0, len(targets), batch_size):
        rows = slice(lo, lo + batch_size)
        candidates = scored.candidates[rows, :r]
        recs = pipeline.finish(candidates, scored.retrieval[rows, :r], scored.ranker[rows, :r], scored.exclude[rows])
        positions.append(_position(recs.ids, targets[rows]))
        found.append((candidates == targets[rows]).any(dim=1).numpy())
    return np.concatenate(positions), np.concatenate(found)


def _position(ids: Tensor, targets: Tensor) -> np.ndarray:
    """``ids [B, K]``, ``targets [B, 1]`` -> ``[B]`` position of the target in its row, -1 when absent."""
    hit = ids == targets
    return torch.where(hit.any(dim=1), hit.int().argmax(dim=1), -1).numpy()


def list_metrics(positions: np.ndarray, in_candidates: np.ndarray, n_candidates: int,
                 k: int = LIST_K) -> dict[str, float]:
    """NDCG@k / HR@k of the final lists, their MRR and the retrieval stage's recall@R (after the seen filter)."""
    hit = positions >= 0
    ranks = np.where(hit, positions, np.iinfo(np.int32).max).astype(np.float64)  # absent: past any cut-off
    return {f"ndcg@{k}": metrics.ndcg(ranks, k), f"hr@{k}": metrics.hit_rate(ranks, k),
            "mrr": float(np.mean(np.where(hit, 1.0 / (np.maximum(positions, 0) + 1.0), 0.0))),
            f"candidate_recall@{n_candidates}": float(np.mean(in_candidates))}


def pipeline_metrics(pipeline: Pipeline, users: EvalUsers, *, scored: ScoredCandidates | None = None,
                     batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """The final list's metrics for ``pipeline`` with its current stage config (``scored``: reuse them)."""
    if scored is None:
        scored = score_candidates(pipeline, users, pipeline.stages.n_candidates, batch_size=batch_size,
                                  progress=progress)
    positions, found = final_positions(pipeline, scored, users)
    return list_metrics(positions, found, pipeline.stages.n_candidates)


def retriever_metrics(pipeline: Pipeline, users: EvalUsers, split: Split) -> dict[str, dict[str, float]]:
    """Full-ranking metrics (recall@100/500 included) of each retriever in the pipeline."""
    eval_set, n = split.eval_set(users.which), pipeline.spec.n_items
    catalog = pipeline.catalog.index(torch.arange(n + 1))
    with torch.inference_mode():
        scorer = TwoTowerScorer(pipeline.two_tower_model, pipeline.retriever.view, catalog, users.user,
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
    validation metrics. ``grid``: ``StageConfig`` field -> values, e.g. ``{"n_candidates": [100, 200],
    "retrieval_weight": [0, 1]}``; candidates are scored once, at the largest R."""
    if valid.which != "valid":
        raise ValueError("stage settings are chosen on the validation set only; pass EvalUsers of 'valid'")
    if "retriever" in grid:
        raise ValueError("select stage settings per retriever: set stages.retriever and leave it out of the grid")
    widest = max([pipeline.stages.n_candidates, *grid.get("n_candidates", [])])
    scored = score_candidates(pipeline, valid, widest, batch_size=batch_size, progress=progress)
    table, best, best_score = [], pipeline, -np.inf
    for point in grid_points(grid):
        candidate = pipeline.with_stages(dataclasses.replace(pipeline.stages, **point))
        scores = pipeline_metrics(candidate, valid, scored=scored)
        if select_metric not in scores:
            raise ValueError(f"select_metric {select_metric!r} is not a list metric; choose one of {sorted(scores)}")
        table.append({"stages": point, "valid": scores})
        log.info("validation %s: %s=%.4f", point, select_metric, scores[select_metric])
        if scores[select_metric] > best_score:
            best, best_score = candidate, scores[select_metric]
    return best, table


def stage_grid(grid: dict[str, list[Any]], stages: StageConfig) -> dict[str, list[Any]]:
    """``grid`` as searched for ``stages``: with the LLM re-ranker, R only up to ``stages.n_candidates``
    (scoring a candidate costs a language-model pass over its text, so the configured R is the budget)."""
    if stages.reranker != "llm" or "n_candidates" not in grid:
        return grid
    within = [r for r in grid["n_candidates"] if r <= stages.n_candidates]
    return {**grid, "n_candidates": within or [stages.n_candidates]}


def evaluate_pipeline(pipeline: Pipeline, data: InteractionData, split: Split, which: str = "test", *,
                      grid: dict[str, list[Any]] | None = None, baselines: Sequence[str] = ("ease",),
                      batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """One report: retrieval recall of each retriever, the pipeline list with each retriever (re-ranked
    by DIN under the retriever's name, and by the LLM stage, when there is one, as ``<retriever>->llm``),
    and the single-stage models (the bundled SASRec's own ranking; EASE tuned on validation) on ``which``.

    With ``grid``, stage settings are first chosen on validation (per retriever and re-ranker; see
    ``stage_grid``) and ``which`` is scored with the chosen ones.
    """
    start = time.perf_counter()
    users = EvalUsers.build(pipeline, data, split, which)
    report: dict[str, Any] = {"split": which, "n_users": len(users.held), "n_items": pipeline.spec.n_items,
                              "retrieval": retriever_metrics(pipeline, users, split), "pipeline": {},
                              "single_stage": {}, "selection": {}}
    retrievers = ["two_tower"] + (["sasrec"] if pipeline.sequence is not None else [])
    valid = EvalUsers.build(pipeline, data, split, "valid") if grid else None
    rerankers = ["din"] + (["llm"] if pipeline.llm is not None else [])
    for retriever in retrievers:
        for reranker in rerankers:
            name = retriever if reranker == "din" else f"{retriever}->{reranker}"
            variant = pipeline.with_stages(dataclasses.replace(pipeline.stages, retriever=retriever,
                                                               reranker=reranker))
            if valid is not None and grid:
                variant, table = select_stages(variant, valid, stage_grid(grid, variant.stages),
                                               batch_size=batch_size, progress=progress)
                report["selection"][name] = {"chosen": variant.stages.to_dict(), "grid": table}
            report["pipeline"][name] = {
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


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of an ``evaluate_pipeline`` report: one row per retriever, pipeline and baseline."""
    lines = [f"{report['split']}: {report['n_users']} users, {report['n_items']} items, full ranking"]
    header = f"{'model':<36}{'recall@100':>11}{'recall@500':>11}{'ndcg@10':>9}{'hr@10':>8}"
    lines += [header, "-" * len(header)]
    for name, m in report["retrieval"].items():
        lines.append(f"{'retrieval: ' + name:<36}{m['recall@100']:>11.4f}{m['recall@500']:>11.4f}{'':>9}{'':>8}")
    for m in report["pipeline"].values():
        stages = m["stages"]
        label = f"pipeline: {stages['retriever']} -> {stages.get('reranker', 'din')} (R={stages['n_candidates']})"
        lines.append(f"{label:<36}{'':>11}{'':>11}{m['ndcg@10']:>9.4f}{m['hr@10']:>8.4f}")
    for name, m in report["single_stage"].items():
        lines.append(f"{'single stage: ' + name:<36}{'':>11}{'':>11}{m['ndcg@10']:>9.4f}{m['hr@10']:>8.4f}")
    return "\n".join(lines)
