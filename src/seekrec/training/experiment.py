"""``seekrec train``: config -> data -> model -> trainer -> run directory with results."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.config import ExperimentConfig
from seekrec.data.schema import InteractionData, read_manifest
from seekrec.data.sequences import SequenceDataset
from seekrec.data.splits import load_split
from seekrec.evaluation.report import results_record
from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.io import atomic_write_bytes, atomic_write_json, sha256_file
from seekrec.models.registry import build_loss, build_model
from seekrec.models.task import NextItemTask
from seekrec.training.distributed import init_distributed, shutdown
from seekrec.training.trainer import Trainer

log = logging.getLogger(__name__)


def genre_features(data: InteractionData) -> torch.Tensor:
    """``[N + 1, G]`` multi-hot genres of every item (row 0 = padding), for side-feature models."""
    ids = data.items.column("item_id").to_numpy()
    genres = data.items.column("genres").to_pylist()
    vocab = sorted({g for gs in genres for g in (gs or [])})
    index = {g: j for j, g in enumerate(vocab)}
    feats = torch.zeros(data.n_items + 1, max(len(vocab), 1))
    for item, gs in zip(ids, genres):
        for g in gs or []:
            feats[item, index[g]] = 1.0
    return feats


def item_counts(train_items: np.ndarray, n_items: int) -> torch.Tensor:
    """``[N + 1]`` training frequency of each item, for popularity sampling."""
    return torch.from_numpy(np.bincount(train_items, minlength=n_items + 1).astype(np.float64))


def train_experiment(config: ExperimentConfig, data_dir: str | Path | None, out_dir: str | Path) -> dict[str, Any]:
    """Train and evaluate one configuration (``model.use_item_features = true`` feeds item genres
    to models that take side features); writes ``out_dir/{config.json, metrics.jsonl, best/,
    checkpoints/, results.json}`` and returns the results record. Resumes if ``out_dir`` has a checkpoint."""
    start = time.perf_counter()
    data_dir = data_dir if data_dir is not None else config.data.path
    if data_dir is None:
        raise ValueError("no dataset: pass --data DIR or set data.path in the config")
    out = Path(out_dir)
    ctx = init_distributed(config.train.device)
    try:
        torch.manual_seed(config.train.seed)
        data, split = load_split(data_dir, config.data.split)
        model_params = {k: v for k, v in config.model.items() if k not in ("name", "use_item_features")}
        model_params.setdefault("max_len", config.data.max_len)
        side = genre_features(data) if config.model.get("use_item_features") else None
        if side is not None:
            model_params["n_side_features"] = side.shape[1]
        model = build_model(config.model["name"], model_params, data.n_items, item_features=side)
        loss = build_loss(config.loss, data.n_items, item_counts=item_counts(split.train.items, data.n_items))
        dataset = SequenceDataset(split.train, config.data.max_len, stride=config.data.stride)
        manifest_sha = sha256_file(Path(data_dir) / "manifest.json")
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / CATALOG_FILE, Catalog.from_data(data.item_ids, data.interactions()[1]).to_bytes())
            atomic_write_json(out / "config.json", {**config.to_dict(), "data_manifest_sha256": manifest_sha,
                                                    "data_source": read_manifest(data_dir)["source"]})
        log.info("%s: %d training sequences, %d items, %d parameters", config.name, len(dataset), data.n_items,
                 sum(p.numel() for p in model.parameters()))
        trainer = Trainer(model, lambda m: NextItemTask(m, loss, seed=config.train.seed), split, data.n_items,
                          dataset, config.train, out, ctx, config.data.max_len,
                          manifest={"config": config.to_dict(), "data_manifest_sha256": manifest_sha})
        result = trainer.fit()
        record = results_record(
            data.source, config.model["name"], "test", result.test or {}, len(split.test), data.n_items,
            time.perf_counter() - start,
            name=config.name, valid=result.best_valid, best_epoch=result.best_epoch, best_step=result.best_step,
            epochs=result.epochs_run, steps=result.steps, train_seconds=round(result.seconds, 2),
            seconds_to_best=round(result.seconds_to_best, 2),
            sequences_per_second=round(result.sequences_per_second, 1),
            tokens_per_second=round(result.tokens_per_second, 1), world_size=ctx.world_size,
            loss=config.loss.name, precision=config.train.precision,
        )
        if ctx.is_main:
            atomic_write_json(out / "results.json", record)
        return record
    finally:
        shutdown(ctx)
