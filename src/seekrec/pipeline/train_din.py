"""Training the DIN ranker on a dataset: clicks against sampled negatives, selected on validation AUC,
then calibrated on validation.

Negatives (``din.sampler``): "popularity" or "uniform" draws from the catalog, or "retrieval": draws
from the user's top-R two-tower candidates (the user's own items excluded), the very items the ranker
orders at serving time, so training, validation and calibration see the serving distribution. Their
item features are taken as of the click: ``CTRTask``'s sampled mode reads negatives from one fixed
catalog, whose window counts are not those of the click's time, a difference the model could learn
instead of taste. A click and its K negatives form a group scored by one ``DIN.score_candidates``
call, so the user side (history keys, attention inputs) is computed once per click, not once per pair:
about 2.5x faster than pairwise rows on CPU. The loss is ``CTRTask``'s: binary cross-entropy over the
scored pairs, accidental hits weighted 0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.evaluation.ctr import ctr_report
from seekrec.features.batch import FeatureBatch
from seekrec.features.examples import Examples, OfflineRows
from seekrec.features.spec import FeatureSpec
from seekrec.models.calibration import Calibrator
from seekrec.models.ctr_task import ClickGroups, ClickGroupTask
from seekrec.models.din import DIN
from seekrec.models.factory import build_feature_model
from seekrec.models.layers.features import cat_feature_batches, with_item_ids
from seekrec.models.negatives import NegativeSampler
from seekrec.pipeline.artifacts import feature_model_config
from seekrec.pipeline.config import RankerTraining
from seekrec.pipeline.features import (
    ITEM_ID_COLUMN,
    HeldOut,
    ItemView,
    held_out,
    item_counts,
)
from seekrec.pipeline.fit import fit_feature_model
from seekrec.pipeline.stages import TwoTowerRetriever, retrieve, seen_mask
from seekrec.retrieval.index import ItemIndex
from seekrec.training.trainer import FitResult

log = logging.getLogger(__name__)


class Negatives(Protocol):
    """Draws ``K`` negative item ids for each of the rows ``rows [B]`` (example or user positions)."""

    def draw(self, rows: Tensor, k: int, generator: torch.Generator) -> Tensor: ...


class SampledNegatives:
    """Draws from the whole catalog by popularity or uniformly (``NegativeSampler``)."""

    def __init__(self, sampler: NegativeSampler) -> None:
        self.sampler = sampler

    def draw(self, rows: Tensor, k: int, generator: torch.Generator) -> Tensor:
        return self.sampler.sample((len(rows), k), generator)


class RetrievedNegatives:
    """Draws uniformly from each row's retrieved candidates ``[E, R]`` (0 = empty slot; a row with none
    yields 0, which ``draw_groups`` weighs 0)."""

    def __init__(self, candidates: Tensor) -> None:
        self.candidates = candidates

    def draw(self, rows: Tensor, k: int, generator: torch.Generator) -> Tensor:
        candidates = self.candidates[rows].long()  # [B, R]
        filled = (candidates > 0).sum(dim=1, keepdim=True)  # [B, 1]
        slot = (torch.rand(len(rows), k, generator=generator) * filled).long()  # [B, K] in 0..filled - 1
        return candidates.gather(1, slot.clamp(max=candidates.shape[1] - 1))


@torch.inference_mode()
def retrieved_candidates(retriever: TwoTowerRetriever, catalog: FeatureBatch, user: FeatureBatch,
                         seen: Sequence[np.ndarray], n_candidates: int, *, chunk_size: int = 2048) -> Tensor:
    """``[E, R]`` int32: the two-tower's top ``n_candidates`` unseen items for each of E user rows."""
    was_training = retriever.model.training
    retriever.model.eval()
    vectors = retriever.item_vectors(catalog)  # [N + 1, D]
    index = ItemIndex(vectors[1:], ids=np.arange(1, len(catalog)), metric=retriever.metric)
    out = []
    for lo in range(0, len(user), chunk_size):
        rows = torch.arange(lo, min(lo + chunk_size, len(user)))
        exclude = seen_mask(seen[lo:lo + len(rows)], len(catalog) - 1)
        ids, _ = retrieve(index, retriever.encode_users(user.index(rows)), exclude, n_candidates)
        out.append(ids.to(torch.int32))
    retriever.model.train(was_training)
    return torch.cat(out)


def draw_groups(user: FeatureBatch, item: FeatureBatch, item_ids: Tensor, times: np.ndarray, rows: OfflineRows,
                negatives: Tensor) -> ClickGroups:
    """B clicks (``user``, full ``item`` rows, ``item_ids [B]``, ``times [B]``) grouped with their
    ``negatives [B, K]``, whose features are taken from ``rows`` as of the click."""
    size, k = negatives.shape
    owner_times = np.repeat(np.asarray(times), k)  # [B * K]
    negative_rows = with_item_ids(rows.features("item", negatives.flatten().numpy(), owner_times), negatives.flatten())
    items = cat_feature_batches([item, negative_rows])  # B clicks, then B * K negatives
    order = torch.cat([torch.arange(size)[:, None], size + torch.arange(size * k).view(size, k)], dim=1)  # [B, C]
    label = torch.zeros(size, 1 + k)
    label[:, 0] = 1.0
    real = (negatives != item_ids[:, None]) & (negatives > 0)  # an accidental hit or an empty draw scores nothing
    weight = torch.cat([torch.ones(size, 1), real.float()], dim=1)
    return ClickGroups(user, items.index(order.flatten()), label, weight)


class ClickSource:
    """Training clicks as ``ClickGroups``, K fresh negatives per click each epoch; a share
    ``id_dropout`` of the candidates is shown with id 0, as an item unknown to the model."""

    def __init__(self, examples: Examples, rows: OfflineRows, negatives: Negatives, n_negatives: int, *,
                 id_dropout: float = 0.0) -> None:
        self.examples, self.rows, self.negatives, self.n_negatives = examples, rows, negatives, n_negatives
        self.id_dropout = id_dropout
        self.item = with_item_ids(examples.item, examples.items)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, index: Tensor, generator: torch.Generator) -> ClickGroups:
        ex = self.examples
        groups = draw_groups(ex.user.index(index), self.item.index(index), ex.items[index],
                             ex.timestamps[index].numpy(), self.rows,
                             self.negatives.draw(index, self.n_negatives, generator))
        if self.id_dropout:
            ids = groups.item.categorical[ITEM_ID_COLUMN]  # [B * C, 1]
            dropped = torch.rand(ids.shape, generator=generator) < self.id_dropout
            groups.item.categorical[ITEM_ID_COLUMN] = ids.masked_fill(dropped, 0)
        return groups


@dataclass
class HeldOutGroups:
    """Held-out targets grouped with seeded negatives, and each group's user id (for gAUC)."""

    groups: ClickGroups
    users: np.ndarray  # [B]

    def flat(self, values: Tensor) -> np.ndarray:
        """``[B, C]`` per-pair values -> ``[P]`` of the scored pairs (hits dropped)."""
        return values[self.groups.weight > 0].double().numpy()


def held_out_groups(spec: FeatureSpec, data: InteractionData, held: HeldOut, config: RankerTraining, seed: int, *,
                    sampler: NegativeSampler, retrieval: tuple[TwoTowerRetriever, FeatureBatch] | None = None,
                    ) -> HeldOutGroups:
    """Each held-out target with ``config.eval_negatives`` seeded draws from the configured source (the
    catalog ``sampler``, or the ``retrieval`` stage's candidates given the visible history), all
    features as of the target's time."""
    rows = held.rows(spec, data)
    user = rows.features("user", held.users, held.as_of)
    negatives: Negatives = SampledNegatives(sampler)
    if config.sampler == "retrieval":
        if retrieval is None:
            raise ValueError("din.sampler = 'retrieval' needs the trained two-tower retriever")
        retriever, catalog = retrieval
        negatives = RetrievedNegatives(retrieved_candidates(retriever, catalog, user, held.seen(),
                                                            config.retrieval_candidates))
    targets = torch.from_numpy(held.targets)
    drawn = negatives.draw(torch.arange(len(held)), config.eval_negatives, torch.Generator().manual_seed(seed))
    groups = draw_groups(user, with_item_ids(rows.features("item", held.targets, held.as_of), targets), targets,
                         held.as_of, rows, drawn)
    return HeldOutGroups(groups, held.users)


# seed offsets of the groups DIN is selected and calibrated on (valid) and reported on (test)
REPORT_SEEDS = {"valid": 0, "test": 1}


def catalog_sampler(config: RankerTraining, spec: FeatureSpec, split: Split) -> NegativeSampler:
    """Catalog draws for ``config.sampler``: uniform, else by training popularity."""
    if config.sampler == "uniform":
        return NegativeSampler("uniform", spec.n_items)
    return NegativeSampler("popularity", spec.n_items, item_counts=item_counts(split.train, spec.n_items))


def report_groups(config: RankerTraining, spec: FeatureSpec, data: InteractionData, split: Split, which: str, *,
                  sampler: NegativeSampler, retrieval: tuple[TwoTowerRetriever, FeatureBatch] | None = None,
                  ) -> HeldOutGroups:
    """The ``which`` ("valid" / "test") groups of DIN's report, seeded ``train.seed + REPORT_SEEDS[which]``:
    ``train_din`` scores these, and a reader of the saved run rebuilds the very same pairs with them."""
    if which not in REPORT_SEEDS:
        raise ValueError(f"which must be one of {sorted(REPORT_SEEDS)}, got {which!r}")
    return held_out_groups(spec, data, held_out(data, split, which), config, config.train.seed + REPORT_SEEDS[which],
                           sampler=sampler, retrieval=retrieval)


def group_logits(model: DIN, held: HeldOutGroups, *, chunk_size: int = 256) -> Tensor:
    """``[B, C]`` DIN logits of every held-out group, on the CPU."""
    device = next(model.parameters()).device
    groups, width = held.groups, held.groups.label.shape[1]
    out = []
    for lo in range(0, len(groups), chunk_size):
        rows = torch.arange(lo, min(lo + chunk_size, len(groups)))
        items = groups.item.index((rows[:, None] * width + torch.arange(width)).flatten())
        out.append(model.score_candidates(groups.user.index(rows).to(device), items.to(device)).float().cpu())
    return torch.cat(out)


def ranker_metrics(held: HeldOutGroups, logits: Tensor, calibrator: Calibrator | None = None) -> dict[str, float]:
    """AUC, gAUC (per user), logloss and ECE of ``sigmoid(logits)``, or of the calibrated probabilities."""
    probs = calibrator(logits) if calibrator is not None else torch.sigmoid(logits)
    users = np.repeat(held.users[:, None], logits.shape[1], axis=1)[(held.groups.weight > 0).numpy()]
    report = ctr_report(held.flat(held.groups.label), held.flat(probs), users)
    return {k: float(v) for k, v in report.items()}


def train_din(config: RankerTraining, spec: FeatureSpec, data: InteractionData, split: Split, examples: Examples,
              catalog: FeatureBatch, run_dir: str | Path, *,
              retriever: TwoTowerRetriever | None = None) -> tuple[DIN, Calibrator, FitResult, dict[str, Any]]:
    """Train the ranker on the training clicks, select it on validation AUC, calibrate it on validation.

    ``catalog``: full item rows of ids ``0..N`` (DIN reads history items' key columns from it).
    ``retriever``: the trained two-tower, needed for ``config.sampler = "retrieval"``. Returns the model,
    its calibrator, the fit summary and AUC / gAUC / logloss / ECE on validation and test, before and
    after calibration.
    """
    item_schema = ItemView.of(spec).schema
    columns = dict(item_schema.categorical)
    model_config = {**config.model, "key_columns": [c for c in config.model.get("key_columns", ()) if c in columns]}
    if len(model_config["key_columns"]) < len(config.model.get("key_columns", ())):
        log.warning("DIN key_columns %s: the feature spec has no item column %s; using %s",
                    config.model["key_columns"], sorted(set(config.model["key_columns"]) - set(columns)),
                    model_config["key_columns"])
    torch.manual_seed(config.train.seed)
    model = build_feature_model("din", model_config, user=spec.schema("user"), item=item_schema, catalog=catalog)
    sampler = catalog_sampler(config, spec, split)
    retrieval = None if retriever is None else (retriever, catalog)
    negatives: Negatives = SampledNegatives(sampler)
    if config.sampler == "retrieval":
        if retriever is None:
            raise ValueError("din.sampler = 'retrieval' needs the trained two-tower: pass retriever=")
        seen = [split.train.row(int(u)) for u in examples.users.tolist()]  # the user's own items are no negatives
        negatives = RetrievedNegatives(retrieved_candidates(retriever, catalog, examples.user, seen,
                                                            config.retrieval_candidates))
    source = ClickSource(examples, OfflineRows(spec, data, split.train), negatives, config.n_negatives,
                         id_dropout=config.id_dropout)
    valid = report_groups(config, spec, data, split, "valid", sampler=sampler, retrieval=retrieval)

    def validate() -> dict[str, float]:
        return ranker_metrics(valid, group_logits(model, valid))

    manifest = {"model": "din", "config": feature_model_config(model), "spec_version": spec.version}
    log.info("DIN: %d training clicks x (1 + %d %s negatives), %d parameters", len(examples), config.n_negatives,
             config.sampler, sum(p.numel() for p in model.parameters()))
    result = fit_feature_model(model, ClickGroupTask(model), source, validate, config.train, run_dir,
                               manifest=manifest)
    model = model.cpu().eval()
    with torch.inference_mode():
        valid_logits = group_logits(model, valid)
        calibrator = Calibrator.fit(valid.flat(valid_logits), valid.flat(valid.groups.label), method=config.calibration)
        test = report_groups(config, spec, data, split, "test", sampler=sampler, retrieval=retrieval)
        test_logits = group_logits(model, test)
        # the usual sampled-negative AUC (catalog draws by popularity), for comparison with other rankers
        popular = held_out_groups(spec, data, held_out(data, split, "test"),
                                  dataclasses.replace(config, sampler="popularity"),
                                  config.train.seed + REPORT_SEEDS["test"], sampler=sampler)
        popular_logits = group_logits(model, popular)
    report = {
        "calibrator": calibrator.to_dict(),
        "negatives": config.sampler,
        "negatives_per_target": config.eval_negatives,
        "valid": {"raw": ranker_metrics(valid, valid_logits),
                  "calibrated": ranker_metrics(valid, valid_logits, calibrator)},
        "test": {"raw": ranker_metrics(test, test_logits), "calibrated": ranker_metrics(test, test_logits, calibrator)},
        "test_popularity_negatives": {"raw": ranker_metrics(popular, popular_logits)},
    }
    return model, calibrator, result, report
