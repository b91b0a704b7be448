"""``seekrec train``: its config (TOML + ``key=value`` overrides) and config -> data -> model -> trainer -> run
directory with results."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.config import UnknownKeyError, check_types, from_table, load_config
from seekrec.data.schema import InteractionData, read_manifest
from seekrec.data.sequences import SequenceDataset
from seekrec.data.splits import SPLITS, load_split
from seekrec.data.vocab import Catalog
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.evaluation.report import results_record
from seekrec.io import read_toml, sha256_file
from seekrec.models.factory import build_loss
from seekrec.models.losses import LossConfig
from seekrec.models.task import NextItemTask
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import init_distributed, shutdown
from seekrec.training.run_dir import RunDir, RunModel
from seekrec.training.trainer import FitResult, SequenceEpochs, Trainer

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Which prepared dataset, how to split it, and how training sequences are cut."""

    path: str | None = None
    split: str = "leave_one_out"
    max_len: int = 50
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")
        if self.max_len < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError("data.max_len and data.stride must be >= 1")


@dataclass
class ModelSection:
    """``[model]``: the factory ``name``, ``use_item_features`` (item genres as side features, for the
    models that take them) and the model config's own fields (``params``).

    In TOML the three share one flat table (``name = "sasrec"``, ``dim = 64``). ``params`` are checked
    against the model's config class as soon as the config loads, so a misspelt key or a bad value
    fails before any data is read; ``n_items`` and ``n_side_features`` always come from the data.
    """

    name: str = "sasrec"
    use_item_features: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from seekrec.models.factory import build_model_config, model_config_class, model_takes_item_features

        valid = {f.name for f in fields(model_config_class(self.name))} - {"n_items", "n_side_features"}
        unknown = sorted(set(self.params) - valid - {"n_items", "n_side_features"})
        if unknown:
            raise UnknownKeyError(f"model.{unknown[0]}", f"unknown key {unknown[0]!r} in [model] for {self.name}; "
                                  f"valid: name, use_item_features, {', '.join(sorted(valid))}")
        from_data = sorted({"n_items", "n_side_features"} & set(self.params))
        if from_data:
            raise ValueError(f"model.{from_data[0]} comes from the data; drop it from [model]")
        if not isinstance(self.use_item_features, bool):
            raise ValueError(f"model.use_item_features must be true or false, got {self.use_item_features!r}")
        if self.use_item_features and not model_takes_item_features(self.name):
            raise ValueError(f"model {self.name!r} does not take item features; set model.use_item_features = "
                             "false or pick a model that does")
        check_types(model_config_class(self.name), self.params, "model")  # `dim = "64"` named, not a TypeError
        build_model_config(self.name, self.params, n_items=1)  # bad values, named

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSection:
        """The flat ``[model]`` table -> name, use_item_features and the model's own params."""
        if not isinstance(raw, dict):
            raise ValueError("[model] must be a table")
        params = dict(raw)
        if "name" not in params:
            raise ValueError("[model] needs a name, e.g. name = \"sasrec\"")
        return cls(params.pop("name"), params.pop("use_item_features", False), params)

    def to_dict(self) -> dict[str, Any]:
        """The flat table form, as written in TOML and in a run's ``config.json``."""
        return {"name": self.name, "use_item_features": self.use_item_features, **self.params}


@dataclass
class ExperimentConfig:
    """Everything ``seekrec train`` needs."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """The config from its table form (a run's ``config.json``); unknown keys are named."""
        return from_table(cls, raw)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
        """Read TOML (or start from defaults) and apply ``section.key=value`` overrides. With
        ``train.strategy = "deepspeed"`` the values its JSON sets become ``train.*`` fields; one that the TOML or
        an override set differently is an error naming both (``training.deepspeed_config``)."""
        config = load_config(cls, path, overrides)
        if config.train.deepspeed_config is not None and config.train.strategy == "deepspeed":
            from seekrec.training.deepspeed_config import read_ds_config, train_from_ds_config

            source = str(config.train.deepspeed_config)
            config.train = train_from_ds_config(config.train, read_ds_config(source),
                                                explicit=_explicit_train_fields(path, overrides), source=source,
                                                world_size=int(os.environ.get("WORLD_SIZE", "1")))
        return config

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": self.model.to_dict()}


def _explicit_train_fields(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The ``train`` fields the user set, each with where: the TOML's ``[train]`` table, then ``train.x=...``
    overrides (the command line wins, as in ``load_config``)."""
    table = read_toml(path).get("train", {}) if path is not None else {}
    where = {key: str(path) for key in (table if isinstance(table, dict) else {})}
    for item in overrides:
        section, _, key = item.partition("=")[0].partition(".")
        if section == "train" and key:
            where[key] = "command line"
    return where


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
    to models that take side features); writes the run directory ``out_dir`` (``training.run_dir``: config,
    resolved model, catalog, metrics log, checkpoints, best weights, results) and returns the results
    record. Resumes if ``out_dir`` has a checkpoint."""
    start = time.perf_counter()
    data_dir = data_dir if data_dir is not None else config.data.path
    if data_dir is None:
        raise ValueError("no dataset: pass --data DIR or set data.path in the config")
    run = RunDir(Path(out_dir))
    ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    try:
        torch.manual_seed(config.train.seed)
        data, split = load_split(data_dir, config.data.split)
        side = genre_features(data) if config.model.use_item_features else None
        run_model = RunModel.resolve(config.model, data_max_len=config.data.max_len, n_items=data.n_items,
                                     n_side_features=None if side is None else side.shape[1])
        model = run_model.build(item_features=side)
        loss = build_loss(config.loss, data.n_items, item_counts=item_counts(split.train.items, data.n_items))
        dataset = SequenceDataset(split.train, config.data.max_len, stride=config.data.stride,
                                  with_context=bool(getattr(model.config, "needs_context", False)))
        manifest_sha = sha256_file(Path(data_dir) / "manifest.json")
        if ctx.is_main:
            run.write_config({**config.to_dict(), "data_manifest_sha256": manifest_sha,
                              "data_source": read_manifest(data_dir)["source"]})
            run.write_model(run_model)
            if config.train.deepspeed_config is not None:
                from seekrec.training.deepspeed_config import read_ds_config

                run.write_deepspeed_config(read_ds_config(config.train.deepspeed_config))
            run.write_catalog(Catalog.from_data(data.item_ids, data.interactions()[1]))
        log.info("%s: %d training sequences, %d items, %d parameters", config.name, len(dataset), data.n_items,
                 sum(p.numel() for p in model.parameters()))

        def ranking(which: str) -> Callable[[], dict[str, float]]:
            scorer, eval_set = ModelScorer(model, config.data.max_len), split.eval_set(which)
            return lambda: evaluate(scorer, eval_set, data.n_items, batch_size=config.train.eval_batch_size,
                                    device=ctx.device).metrics

        trainer = Trainer(model, lambda m: NextItemTask(m, loss, seed=config.train.seed),
                          SequenceEpochs(dataset, config.train, ctx), ranking("valid"), config.train, run_dir=run,
                          ctx=ctx, manifest={"config": config.to_dict(), "data_manifest_sha256": manifest_sha},
                          test=ranking("test"))
        result = trainer.fit()
        record = fit_record(result, source=data.source, model=config.model.name, n_test=len(split.test),
                            n_items=data.n_items, seconds=time.perf_counter() - start, name=config.name,
                            world_size=ctx.world_size, loss=config.loss.name, precision=config.train.precision,
                            strategy=config.train.strategy)
        if ctx.is_main:
            run.write_results(record)
        return record
    finally:
        shutdown(ctx)


def fit_record(result: FitResult, *, source: str, model: str, n_test: int, n_items: int, seconds: float, name: str,
               world_size: int, loss: str, precision: str, **extra: Any) -> dict[str, Any]:
    """The results.json of a next-item run trained by the ``Trainer``: its test metrics and what the fit cost
    (``seekrec train`` and ``seekrec llm distill`` write the same record; ``extra`` adds fields)."""
    return results_record(
        source, model, "test", result.test or {}, n_test, n_items, seconds,
        name=name, valid=result.best_valid, best_epoch=result.best_epoch, best_step=result.best_step,
        epochs=result.epochs_run, steps=result.steps, train_seconds=round(result.seconds, 2),
        seconds_to_best=round(result.seconds_to_best, 2), sequences_per_second=round(result.examples_per_second, 1),
        tokens_per_second=round(result.tokens_per_second, 1), world_size=world_size, loss=loss, precision=precision,
        **extra,
    )
