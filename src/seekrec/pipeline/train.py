"""Training the pipeline's feature models on a dataset: the two-tower retriever and the DIN ranker.

Both train on ``Examples`` (every training click with user and item features as of the click) through
the shared ``TrainStep`` (``loop.FeatureTrainer``) and are selected on validation:

* two-tower: in-batch + sampled softmax with log-Q (item counts from the training clicks); validated by
  the full-ranking protocol of ``evaluation.ranking`` on the validation targets, user features taken
  as of each target's time;
* DIN: each click against negatives drawn by popularity, whose item features are taken as of the click
  (a fixed catalogue would give negatives other-time window counts than the clicks, a pattern the model
  could learn instead of taste); validated by AUC of held-out targets against sampled negatives, then
  Platt-calibrated on that validation set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData
from seekrec.data.splits import EvalSet, Split
from seekrec.evaluation import metrics as ranking_metrics
from seekrec.evaluation.ctr import ctr_report
from seekrec.evaluation.ranking import EvalBatch, evaluate
from seekrec.features.batch import FeatureBatch
from seekrec.features.examples import Examples, OfflineRows
from seekrec.features.spec import FeatureSpec
from seekrec.models.calibration import Calibrator
from seekrec.models.ctr_task import CTRBatch, CTRTask
from seekrec.models.din import DIN
from seekrec.models.layers.features import cat_feature_batches, with_item_ids
from seekrec.models.negatives import NegativeSampler
from seekrec.models.registry import build_feature_model, build_retrieval_loss
from seekrec.models.retrieval_task import RetrievalBatch, RetrievalTask
from seekrec.models.two_tower import TwoTower
from seekrec.pipeline.artifacts import feature_model_config
from seekrec.pipeline.config import RankerTraining, TwoTowerTraining
from seekrec.pipeline.features import HeldOut, ItemView, has_time_varying, held_out, item_counts
from seekrec.pipeline.loop import FeatureTrainer, FitResult

log = logging.getLogger(__name__)
RECALL_KS = (100, 500)


# --- two-tower ------------------------------------------------------------------------------------------


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
    ``catalogue``: full item rows of ids ``0..N``. Item vectors are encoded once, at construction.
    """

    def __init__(self, model: TwoTower, view: ItemView, catalogue: FeatureBatch, user: FeatureBatch,
                 users: np.ndarray, *, chunk_size: int = 512) -> None:
        self.model, self.user, self.chunk_size = model, user, chunk_size
        self.device = model.log_temperature.device
        self.items = model.encode_catalogue(view.select(catalogue))  # [N + 1, D]
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
        """Mean cross-entropy of each user's target over the whole catalogue: the validation loss."""
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


def train_two_tower(config: TwoTowerTraining, spec: FeatureSpec, data: InteractionData, split: Split,
                    examples: Examples, catalogue: FeatureBatch, run_dir: str | Path) -> tuple[TwoTower, ItemView,
                                                                                              FitResult]:
    """Train the retriever on ``examples`` (the training clicks), selected on validation.

    ``catalogue``: full item rows of ids ``0..N`` (sampled negatives' features, item vectors).
    """
    view = ItemView.of(spec, config.drop_item_columns)
    torch.manual_seed(config.train.seed)
    model = build_feature_model("two_tower", config.model, user=spec.schema("user"), item=view.schema)
    loss = build_retrieval_loss(config.loss, spec.n_items, item_counts=item_counts(split.train, spec.n_items))
    if loss.sampler is not None and has_time_varying(spec, view):
        log.warning("the item tower reads time-varying columns and negatives come from a fixed catalogue: their "
                    "window counts are not as of the clicks; drop those columns (drop_item_columns)")
    task = RetrievalTask(model, loss, catalogue=view.select(catalogue) if loss.sampler else None,
                         seed=config.train.seed)
    valid = held_out(data, split, "valid")
    valid_user = valid.rows(spec, data).features("user", valid.users, valid.as_of)

    def validate() -> dict[str, float]:
        scorer = TwoTowerScorer(model, view, catalogue, valid_user, valid.users)
        return retrieval_metrics(scorer, split.valid, spec.n_items, batch_size=config.train.eval_batch_size)

    manifest = {"model": "two_tower", "config": feature_model_config(model), "spec_version": spec.version,
                "drop_item_columns": list(view.dropped)}
    log.info("two-tower: %d training clicks, %d parameters", len(examples), sum(p.numel() for p in model.parameters()))
    result = FeatureTrainer(model, task, RetrievalSource(examples, view), validate, config.train, run_dir,
                            manifest=manifest).fit()
    return model.cpu().eval(), view, result


# --- DIN ------------------------------------------------------------------------------------------------


@dataclass
class PairSet:
    """Scored (user, item) pairs: clicks followed by their sampled negatives; ``users [P]`` for gAUC."""

    batch: CTRBatch
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.batch)


def with_negatives(user: FeatureBatch, item: FeatureBatch, item_ids: Tensor, times: np.ndarray, rows: OfflineRows,
                   sampler: NegativeSampler, n_negatives: int, generator: torch.Generator) -> tuple[CTRBatch, Tensor]:
    """B clicks (``user``, ``item`` with ``item_id``, ``item_ids [B]``, ``times [B]``) plus ``K =
    n_negatives`` sampled items each, features as of the click; an accidental hit (a draw equal to the
    click) is dropped. Returns the labelled batch and ``[P]`` the click index of every pair."""
    size = len(item_ids)
    negatives = sampler.sample((size, n_negatives), generator)  # [B, K]
    owner = torch.arange(size).repeat_interleave(n_negatives)  # [B * K]
    negative_rows = rows.features("item", negatives.flatten().numpy(), np.asarray(times)[owner.numpy()])
    items = cat_feature_batches([item, with_item_ids(negative_rows, negatives.flatten())])
    groups = torch.cat([torch.arange(size), owner])
    labels = torch.cat([torch.ones(size), torch.zeros(size * n_negatives)])
    keep = torch.cat([torch.ones(size, dtype=torch.bool), negatives.flatten() != item_ids[owner]])
    return CTRBatch(user.index(groups[keep]), items.index(keep), labels[keep]), groups[keep]


class ClickSource:
    """Training clicks with ``n_negatives`` sampled items each, as labelled ``CTRBatch`` es."""

    def __init__(self, examples: Examples, rows: OfflineRows, sampler: NegativeSampler, n_negatives: int) -> None:
        self.examples, self.rows, self.sampler, self.n_negatives = examples, rows, sampler, n_negatives
        self.item = with_item_ids(examples.item, examples.items)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, index: Tensor, generator: torch.Generator) -> CTRBatch:
        ex = self.examples
        batch, _ = with_negatives(ex.user.index(index), self.item.index(index), ex.items[index],
                                  ex.timestamps[index].numpy(), self.rows, self.sampler, self.n_negatives, generator)
        return batch


def held_out_pairs(spec: FeatureSpec, data: InteractionData, held: HeldOut, sampler: NegativeSampler,
                   n_negatives: int, seed: int) -> PairSet:
    """Each held-out target against ``n_negatives`` seeded draws, features as of the target's time."""
    rows = held.rows(spec, data)
    user = rows.features("user", held.users, held.as_of)
    targets = torch.from_numpy(held.targets)
    item = with_item_ids(rows.features("item", held.targets, held.as_of), targets)
    generator = torch.Generator().manual_seed(seed)
    batch, groups = with_negatives(user, item, targets, held.as_of, rows, sampler, n_negatives, generator)
    return PairSet(batch, held.users[groups.numpy()])


def pair_logits(model: DIN, pairs: PairSet, *, chunk_size: int = 4096) -> Tensor:
    """``[P]`` DIN logits of every pair, on the CPU."""
    device = next(model.parameters()).device
    out = []
    for lo in range(0, len(pairs), chunk_size):
        rows = torch.arange(lo, min(lo + chunk_size, len(pairs)))
        out.append(model(pairs.batch.user.index(rows).to(device), pairs.batch.item.index(rows).to(device)).float().cpu())
    return torch.cat(out)


def ranker_metrics(pairs: PairSet, logits: Tensor, calibrator: Calibrator | None = None) -> dict[str, float]:
    """AUC, gAUC (per user), logloss and ECE of ``sigmoid(logits)`` or of the calibrated probabilities."""
    probs = (calibrator(logits) if calibrator is not None else torch.sigmoid(logits)).double().numpy()
    labels = pairs.batch.label.numpy() if pairs.batch.label is not None else np.ones(len(pairs))
    return ctr_report(labels, probs, pairs.users)


def train_din(config: RankerTraining, spec: FeatureSpec, data: InteractionData, split: Split, examples: Examples,
              catalogue: FeatureBatch, run_dir: str | Path) -> tuple[DIN, Calibrator, FitResult, dict[str, Any]]:
    """Train the ranker on the training clicks, select it on validation AUC, calibrate it on validation.

    Returns the model, its calibrator, the fit summary and a report of AUC / gAUC / logloss / ECE on
    validation and test, before and after calibration.
    """
    view = ItemView.of(spec)
    torch.manual_seed(config.train.seed)
    model = build_feature_model("din", config.model, user=spec.schema("user"), item=view.schema, catalogue=catalogue)
    counts = item_counts(split.train, spec.n_items) if config.sampler == "popularity" else None
    sampler = NegativeSampler(config.sampler, spec.n_items, item_counts=counts)
    source = ClickSource(examples, OfflineRows(spec, data, split.train), sampler, config.n_negatives)
    seed = config.train.seed
    valid = held_out_pairs(spec, data, held_out(data, split, "valid"), sampler, config.eval_negatives, seed)

    def validate() -> dict[str, float]:
        return ranker_metrics(valid, pair_logits(model, valid))

    manifest = {"model": "din", "config": feature_model_config(model), "spec_version": spec.version}
    log.info("DIN: %d training clicks x (1 + %d negatives), %d parameters", len(examples), config.n_negatives,
             sum(p.numel() for p in model.parameters()))
    result = FeatureTrainer(model, CTRTask(model), source, validate, config.train, run_dir, manifest=manifest).fit()
    model = model.cpu().eval()
    with torch.inference_mode():
        valid_logits = pair_logits(model, valid)
        calibrator = Calibrator.fit(valid_logits, valid.batch.label, method=config.calibration)
        test = held_out_pairs(spec, data, held_out(data, split, "test"), sampler, config.eval_negatives, seed + 1)
        test_logits = pair_logits(model, test)
    report = {
        "calibrator": calibrator.to_dict(),
        "negatives_per_target": config.eval_negatives,
        "valid": {"raw": ranker_metrics(valid, valid_logits), "calibrated": ranker_metrics(valid, valid_logits, calibrator)},
        "test": {"raw": ranker_metrics(test, test_logits), "calibrated": ranker_metrics(test, test_logits, calibrator)},
    }
    return model, calibrator, result, report
