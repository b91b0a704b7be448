"""A training run directory: its layout, written and read only here.

::

    run/
      config.json              the experiment config as run (+ data manifest sha256 and source)
      ds_config.json           train.strategy "deepspeed": the DeepSpeed JSON as given (config.json has the
                               train.* values it set)
      model.json               the model as built: factory name, use_item_features and the full model
                               config (every default, n_items, max_len, n_side_features filled in)
      catalog.json             raw item ids <-> model ids
      metrics.jsonl            train / valid / test records (``MetricsLog``)
      curves.png               their plot (``seekrec plot``, ``RunDir.plot``)
      checkpoints/             resumable checkpoints (``training.checkpoint``)
      best/model.safetensors   the weights of the best validation (gathered from the shards under FSDP)
      best/meta.json           its epoch, step, validation metrics and the trainer's manifest
      results.json             the results record (test metrics, n_items, timings)

The pipeline's feature-model runs (``two_tower/``, ``din/``) hold ``metrics.jsonl`` and ``best/``
only. Runs written before ``model.json`` existed are read through ``_legacy_model``: the one place
that still derives a model from ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.evaluation.plots import plot_curves
from seekrec.io import atomic_path, atomic_write_bytes, atomic_write_json
from seekrec.models.factory import build_model, build_model_config
from seekrec.models.weights import WeightsError, load_weights
from seekrec.training.metrics_log import MetricsLog

if TYPE_CHECKING:
    from seekrec.training.experiment import ModelSection

CONFIG_FILE = "config.json"
DS_CONFIG_FILE = "ds_config.json"
MODEL_FILE = "model.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


class RunDirError(ValueError):
    """A run directory that cannot be read as written; the message names the file and what to do."""


@dataclass(frozen=True)
class RunModel:
    """``model.json``: the model a run trains, resolved once at train time so that readers build it
    without re-deriving anything from ``config.json``."""

    name: str
    config: dict[str, Any]  # the model config dataclass as a dict, n_items included
    use_item_features: bool = False

    @classmethod
    def resolve(cls, section: ModelSection, *, data_max_len: int, n_items: int,
                n_side_features: int | None = None) -> RunModel:
        """``[model]`` completed from the data: ``max_len`` defaults to ``data.max_len``; ``n_items`` and
        (with item features) ``n_side_features`` come from the data; the model's config class fills the rest."""
        params = dict(section.params)
        params.setdefault("max_len", data_max_len)
        if n_side_features is not None:
            params["n_side_features"] = n_side_features
        config = dataclasses.asdict(build_model_config(section.name, params, n_items))
        return cls(section.name, config, section.use_item_features)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RunModel:
        return cls(doc["name"], dict(doc["config"]), bool(doc.get("use_item_features", False)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def n_items(self) -> int:
        return int(self.config["n_items"])

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

    def build(self, *, item_features: Tensor | None = None) -> nn.Module:
        """A freshly initialised model; ``item_features [N + 1, G]`` for models that take them."""
        return build_model(self.name, self.config, self.n_items, item_features=item_features)


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory and the only code that reads or writes them."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- where things are ------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def catalog_file(self) -> Path:
        return self.path / CATALOG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_DIR / WEIGHTS_FILE

    @property
    def best_meta_file(self) -> Path:
        return self.path / BEST_DIR / META_FILE

    @property
    def metrics_log(self) -> MetricsLog:
        return MetricsLog(self.path / METRICS_FILE)

    def plot(self, out: str | Path | None = None) -> Path:
        """Training curves of ``metrics.jsonl`` as a PNG (``curves.png`` in the run unless ``out``)."""
        records = self.metrics_log.read()
        if not records:
            raise FileNotFoundError(f"{self.path / METRICS_FILE} is missing or empty: is {self.path} a training "
                                    "run directory?")
        return plot_curves(records, self.path.name, out if out is not None else self.path / CURVES_FILE)

    # -- writing ---------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_file, config)

    def write_model(self, model: RunModel) -> None:
        atomic_write_json(self.model_file, model.to_dict())

    def write_deepspeed_config(self, ds_config: dict[str, Any]) -> None:
        """The DeepSpeed JSON a run trained with, kept beside its config (the user's file may change later)."""
        atomic_write_json(self.path / DS_CONFIG_FILE, ds_config)

    def write_catalog(self, catalog: Catalog) -> None:
        atomic_write_bytes(self.catalog_file, catalog.to_bytes())

    def write_results(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.results_file, record)

    def save_best(self, model: nn.Module, meta: dict[str, Any]) -> None:
        """The weights of a new best validation, then their ``meta.json`` (epoch, step, metrics, ...)."""
        with atomic_path(self.best_weights) as tmp:
            save_model(model, str(tmp))
        atomic_write_json(self.best_meta_file, meta)

    def save_best_weights(self, weights: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """``save_best`` from a state dict, e.g. the full weights gathered from FSDP shards on rank 0."""
        with atomic_path(self.best_weights) as tmp:
            save_file({name: t.contiguous() for name, t in weights.items()}, str(tmp), metadata={"format": "pt"})
        atomic_write_json(self.best_meta_file, meta)

    # -- reading ---------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        return read_json(self.config_file)

    def read_results(self) -> dict[str, Any]:
        return read_json(self.results_file)

    def read_best_meta(self) -> dict[str, Any]:
        return read_json(self.best_meta_file)

    @property
    def finished(self) -> bool:
        """Whether training ran to its end (results.json is written last)."""
        return self.results_file.is_file()

    def resume_hint(self) -> str | None:
        """What a stopped run still offers, for the message a user sees when it stops: rerunning the same
        command resumes from ``checkpoints/`` and ``best/`` can be published already. None: nothing to offer."""
        offers = []
        if (self.checkpoints / "LATEST").is_file():
            offers.append("rerun the same command to resume from its last checkpoint")
        if self.best_weights.is_file():
            offers.append(f"`seekrec registry publish {self.path}` publishes its best validation weights")
        return f"{self.path} is unfinished: {'; '.join(offers)}" if offers else None

    def read_model(self) -> RunModel:
        """``model.json``, or for a run written before it existed, the model its config resolved to."""
        if not self.model_file.exists():
            return self._legacy_model()
        doc = read_json(self.model_file)
        for key in ("name", "config"):
            required(doc, key, self.model_file)
        return RunModel.from_dict(doc)

    def load_best(self, model: nn.Module) -> nn.Module:
        """``model`` with the best validation weights loaded; every tensor must fit."""
        if not self.best_weights.is_file():
            raise RunDirError(f"{self.best_weights}: missing; train the run until it validates at least once")
        try:
            return load_weights(model, self.best_weights)
        except WeightsError as exc:
            raise RunDirError(f"{exc}; the model is the one {self.path} describes") from exc

    def read_best_weights(self) -> dict[str, Tensor]:
        """The best validation weights as a state dict (CPU tensors)."""
        if not self.best_weights.is_file():
            raise RunDirError(f"{self.best_weights}: missing; train the run until it validates at least once")
        try:
            return load_file(str(self.best_weights))
        except SafetensorError as exc:
            raise RunDirError(f"{self.best_weights}: unreadable ({exc})") from exc

    def _legacy_model(self) -> RunModel:
        """The resolution ``train_experiment`` applied before it wrote ``model.json``: ``[model]`` of
        config.json, ``max_len`` from ``data.max_len``, ``n_items`` from results.json and
        ``n_side_features`` from the shape of the stored ``item_features``."""
        from seekrec.training.experiment import (
            ModelSection,  # lazy: experiment writes runs through here
        )

        config = self.read_config()
        max_len = required(required(config, "data", self.config_file), "max_len", self.config_file)
        n_items = int(required(self.read_results(), "n_items", self.results_file))
        section_table = required(config, "model", self.config_file)
        try:
            section = ModelSection.from_dict(section_table)
        except ValueError as exc:
            raise RunDirError(f"{self.config_file}: {exc}") from exc
        side = self._stored_shape("item_features")[1] if section.use_item_features else None
        try:
            return RunModel.resolve(section, data_max_len=max_len, n_items=n_items, n_side_features=side)
        except ValueError as exc:
            raise RunDirError(f"{self.config_file}: {exc}") from exc

    def _stored_shape(self, name: str) -> list[int]:
        if not self.best_weights.is_file():
            raise RunDirError(f"{self.best_weights}: missing; train the run until it validates at least once")
        with safe_open(str(self.best_weights), framework="pt") as fh:
            if name not in fh.keys():
                raise RunDirError(f"{self.best_weights}: has no tensor {name!r}, but {self.config_file} says the "
                                  "model uses item features")
            return list(fh.get_slice(name).get_shape())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; RunDirError naming the file when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunDirError(f"{path}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict):
        raise RunDirError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def required(doc: dict[str, Any], key: str, path: Path) -> Any:
    """``doc[key]``, or RunDirError naming ``path`` and the missing key."""
    if key not in doc:
        raise RunDirError(f"{path}: no {key!r} field; was it written by `seekrec train`?")
    return doc[key]
