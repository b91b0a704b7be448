"""Training the two-tower retriever on a dataset (the DIN ranker is trained in ``train_din``).

It trains on ``Examples`` (every training click with user and item features as of the click) through
the shared ``training.Trainer`` (``fit.fit_feature_model``) with in-batch + sampled softmax and log-Q
correction (item counts from the training clicks), and is selected on the full-ranking protocol of
``evaluation.ranking`` over the validation targets, user features taken as of each target's time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData
from seekrec.data.splits import EvalSet, Split
from seekrec.evaluation import metrics as ranking_metrics
from seekrec.evaluation.ranking import EvalBatch, evaluate
from seekrec.features.batch import FeatureBatch
from seekrec.features.examples import Examples
from seekrec.features.spec import FeatureSpec
from seekrec.models.factory import build_feature_model, build_retrieval_loss
from seekrec.models.layers.features import with_item_ids
from seekrec.models.retrieval_task import RetrievalBatch, RetrievalTask
from seekrec.models.two_tower import TwoTower
from seekrec.pipeline.artifacts import feature_model_config
from seekrec.pipeline.config import TwoTowerTraining
from seekrec.pipeline.features import ItemView, has_time_varying, held_out, item_counts
from seekrec.pipeline.fit import fit_feature_model
from seekrec.training.trainer import FitResult

log = logging.getLogger(__name__)
RECALL_KS = (100, 500)



class RetrievalSource:
    """Training clicks as ``RetrievalBatch`` es: user rows, the clicked item's rows (the view's columns)."""

    def __init__(self, examples: Examples, view: ItemView) -> None:
        self.user = examples.user
        self.item = view.select(with_item_ids(examples.item, examples.items))
        self.item_ids = examples.items

    def __len__(self) -> int:
        return len(self.item_ids)

    def batch(self, index: Tensor, generator: torch.Generator) -> RetrievalBatch:
        return RetrievalBatch(self.user.index(index), self.item.index(index), self.item_ids[index])


class TwoTowerScorer:
    """A full-ranking ``Scorer``: each evaluation user's tower vector against every item vector.

    ``user``: features of the evaluation ``users`` (same order) as of their targets' times;
    ``catalog``: full item rows of ids ``0..N``. Item vectors are encoded once, at construction.
    """

    def __init__(self, model: TwoTower, view: ItemView, catalog: FeatureBatch, user: FeatureBatch,
                 users: np.ndarray, *, chunk_size: int = 512) -> None:
        self.model, self.user, self.chunk_size = model, user, chunk_size
        self.device = model.log_temperature.device
        self.items = model.encode_catalog(view.select(catalog))  # [N + 1, D]
        self.position = np.full(int(users.max(initial=0)) + 1, -1, dtype=np.int64)
        self.position[users] = np.arange(len(users))

    def logits(self, rows: Tensor) -> Tensor:
        """``[B, N + 1]`` logits of the users at ``rows`` of ``user``; column 0 (padding) is -inf."""
        users = self.model.encode_users(self.user.index(rows).to(self.device))  # [B, D]
        scores = self.model.score(users, self.items).float()  # [B, N + 1]
        scores[:, 0] = -torch.inf
        return scores

    def score(self, batch: EvalBatch) -> Tensor:
        rows = self.position[batch.users.cpu().numpy()]
        if np.any(rows < 0):
            raise ValueError("the batch holds users this scorer has no features for")
        return self.logits(torch.from_numpy(rows))

    def full_softmax_loss(self, targets: np.ndarray) -> float:
        """Mean cross-entropy of each user's target over the whole catalog: the validation loss."""
        total = 0.0
        for lo in range(0, len(targets), self.chunk_size):
            rows = torch.arange(lo, min(lo + self.chunk_size, len(targets)))
            logits = self.logits(rows)
            picked = logits.gather(1, torch.from_numpy(targets[lo:lo + len(rows)]).to(self.device)[:, None])
            total += float((logits.logsumexp(dim=1) - picked[:, 0]).sum())
        return total / len(targets)


def retrieval_metrics(scorer: Any, eval_set: EvalSet, n_items: int, *, batch_size: int = 512) -> dict[str, float]:
    """The full-ranking metrics of ``scorer`` plus ``recall@100`` / ``recall@500`` (one target per user,
    so recall@K is HR@K) and, for a ``TwoTowerScorer``, the full-softmax ``loss``."""
    result = evaluate(scorer, eval_set, n_items, batch_size=batch_size, device=getattr(scorer, "device", "cpu"))
    out = dict(result.metrics)
    for k in RECALL_KS:
        out[f"recall@{k}"] = ranking_metrics.hit_rate(result.ranks, k)
    if isinstance(scorer, TwoTowerScorer):
        out["loss"] = scorer.full_softmax_loss(eval_set.targets)
    return out


def train_two_tower(
    config: TwoTowerTraining, spec: FeatureSpec, data: InteractionData, split: Split, examples: Examples,
    catalog: FeatureBatch, run_dir: str | Path,
) -> tuple[TwoTower, ItemView, FitResult]:
    """Train the retriever on ``examples`` (the training clicks), selected on validation.

    ``catalog``: full item rows of ids ``0..N`` (sampled negatives' features, item vectors).
    """
    view = ItemView.of(spec, config.drop_item_columns)
    torch.manual_seed(config.train.seed)
    model = build_feature_model("two_tower", config.model, user=spec.schema("user"), item=view.schema)
    loss = build_retrieval_loss(config.loss, spec.n_items, item_counts=item_counts(split.train, spec.n_items))
    if loss.sampler is not None and has_time_varying(spec, view):
        log.warning("the item tower reads time-varying columns and negatives come from a fixed catalog: their "
                    "window counts are not as of the clicks; drop those columns (drop_item_columns)")
    task = RetrievalTask(model, loss, catalog=view.select(catalog) if loss.sampler else None,
                         seed=config.train.seed)
    valid = held_out(data, split, "valid")
    valid_user = valid.rows(spec, data).features("user", valid.users, valid.as_of)

    def validate() -> dict[str, float]:
        scorer = TwoTowerScorer(model, view, catalog, valid_user, valid.users)
        return retrieval_metrics(scorer, split.valid, spec.n_items, batch_size=config.train.eval_batch_size)

    manifest = {"model": "two_tower", "config": feature_model_config(model), "spec_version": spec.version,
                "drop_item_columns": list(view.dropped)}
    log.info("two-tower: %d training clicks, %d parameters", len(examples), sum(p.numel() for p in model.parameters()))
    result = fit_feature_model(model, task, RetrievalSource(examples, view), validate, config.train, run_dir,
                               manifest=manifest)
    return model.cpu().eval(), view, result
