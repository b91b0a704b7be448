"""Pipeline configuration: one validated dataclass per part, composed into ``PipelineConfig`` from TOML.

``StageConfig`` (in ``stage_config.py``, so serving imports no training code) is what a loaded
pipeline runs with and travels in the bundle; the rest says how ``seekrec pipeline train`` builds the features and trains the two models.
Every section has its own defaults, so a TOML file lists only what it changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekrec.config import UnknownKeyError, from_table, load_config
from seekrec.data.splits import SPLITS
from seekrec.features.spec import FeatureSpecConfig
from seekrec.features.text import TextMethod
from seekrec.models.calibration import CALIBRATION_METHODS
from seekrec.models.din import DINConfig
from seekrec.models.losses import RetrievalLossConfig
from seekrec.models.negatives import SAMPLER_KINDS
from seekrec.models.two_tower import TwoTowerConfig
from seekrec.pipeline.stage_config import StageConfig
from seekrec.training.config import TrainConfig

# Validation metrics each model can be selected on; all are higher-is-better.
RETRIEVAL_SELECT = ("recall@100", "recall@500", "ndcg@10", "hr@10", "hr@50", "mrr")
RANKER_SELECT = ("auc", "gauc")
NEGATIVE_SOURCES = (*SAMPLER_KINDS, "retrieval")

@dataclass
class DataSource:
    """Which prepared dataset and split the models are trained and validated on."""

    path: str | None = None
    split: str = "leave_one_out"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {self.split!r}")


@dataclass
class FeaturesConfig:
    """Arguments of ``FeatureSpecConfig.default``: history length, text method and width, count windows."""

    sequence_len: int = 50
    text: str = "tfidf"
    text_dim: int = 32
    windows_days: tuple[float, ...] = (1.0, 7.0)

    def __post_init__(self) -> None:
        self.windows_days = tuple(float(d) for d in self.windows_days)
        choices = tuple(m.value for m in TextMethod)
        if self.text not in choices:
            raise ValueError(f"features.text must be one of {choices}, got {self.text!r}")
        if self.sequence_len < 1 or self.text_dim < 1:
            raise ValueError("features.sequence_len and features.text_dim must be >= 1 (DIN needs the history)")

    def spec_config(self, data: Any) -> FeatureSpecConfig:
        """The feature columns for ``data`` (an ``InteractionData``)."""
        return FeatureSpecConfig.default(data, sequence_len=self.sequence_len, text=TextMethod(self.text),
                                         text_dim=self.text_dim, windows_days=self.windows_days)


@dataclass
class TwoTowerTraining:
    """The retrieval model: ``TwoTowerConfig`` fields (``model``), its loss and optimisation.

    ``drop_item_columns``: spec item columns the item tower leaves out. The default drops the item
    window counts: item vectors sit in an index built once, so a feature that changes by the hour
    would be stale there (the ranker reads fresh ones). Add "text" for the no-text ablation.
    """

    model: dict[str, Any] = field(default_factory=dict)  # TwoTowerConfig's defaults
    loss: RetrievalLossConfig = field(default_factory=lambda: RetrievalLossConfig(n_negatives=256))
    drop_item_columns: tuple[str, ...] = ("counts",)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-3, batch_size=512, max_epochs=20, warmup_steps=50, patience=3, select_metric="recall@100"))

    def __post_init__(self) -> None:
        self.drop_item_columns = tuple(self.drop_item_columns)
        _check_model_keys(self.model, TwoTowerConfig, "two_tower.model")
        if self.train.select_metric not in RETRIEVAL_SELECT:
            raise ValueError(f"two_tower.train.select_metric must be one of {RETRIEVAL_SELECT}, "
                             f"got {self.train.select_metric!r}")


@dataclass
class RankerTraining:
    """The DIN ranker: ``DINConfig`` fields (``model``), negatives, calibration and optimisation.

    Each training click is paired with ``n_negatives`` items drawn by ``sampler``, with item features
    as of the click: "retrieval" (default): among the trained two-tower's top ``retrieval_candidates``
    for the user (their own items excluded), the items the ranker must order at serving time; or
    "popularity" / "uniform" over the catalog (on ml-100k these made the final list worse at every
    R). ``id_dropout``: share of training candidates whose id is replaced by 0 (unknown), so the ranker
    also learns to score an item from its content, as it must for items added after training.
    Validation pairs each held-out target with ``eval_negatives`` drawn the same way (seeded), and the
    calibrator is fitted on them.
    """

    model: dict[str, Any] = field(default_factory=lambda: {"activation": "relu", "key_columns": ["genres"]})
    n_negatives: int = 4
    eval_negatives: int = 20
    sampler: str = "retrieval"
    retrieval_candidates: int = 200
    id_dropout: float = 0.1
    calibration: str = "platt"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=3e-3, batch_size=512, max_epochs=10, warmup_steps=50, patience=2, select_metric="auc"))

    def __post_init__(self) -> None:
        _check_model_keys(self.model, DINConfig, "din.model")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"din.id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.n_negatives < 1 or self.eval_negatives < 1:
            raise ValueError("din.n_negatives and din.eval_negatives must be >= 1")
        if self.sampler not in NEGATIVE_SOURCES:
            raise ValueError(f"din.sampler must be one of {NEGATIVE_SOURCES}, got {self.sampler!r}")
        if self.retrieval_candidates < 1:
            raise ValueError(f"din.retrieval_candidates must be >= 1, got {self.retrieval_candidates}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"din.calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}")
        if self.train.select_metric not in RANKER_SELECT:
            raise ValueError(f"din.train.select_metric must be one of {RANKER_SELECT}, "
                             f"got {self.train.select_metric!r}")


@dataclass
class PipelineConfig:
    """Everything ``seekrec pipeline train`` needs. ``sasrec_run``: a ``seekrec train`` run directory
    whose best checkpoint joins the bundle as the alternative retriever (and the single-stage baseline)."""

    name: str = "pipeline"
    data: DataSource = field(default_factory=DataSource)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    two_tower: TwoTowerTraining = field(default_factory=TwoTowerTraining)
    din: RankerTraining = field(default_factory=RankerTraining)
    stages: StageConfig = field(default_factory=StageConfig)
    sasrec_run: str | None = None

    def __post_init__(self) -> None:
        if self.stages.retriever == "sasrec" and self.sasrec_run is None:
            raise ValueError("stages.retriever = 'sasrec' needs sasrec_run = a `seekrec train` run directory")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PipelineConfig:
        """The config from its table form; each partial table keeps its section's own defaults."""
        return from_table(cls, raw)

    @classmethod
    def load(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> PipelineConfig:
        """Read TOML (or start from defaults) and apply ``section.key=value`` overrides
        (``two_tower.train.lr=1e-3``, ``stages.n_candidates=100``)."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_model_keys(model: Mapping[str, Any], config_class: type, where: str) -> None:
    """Keys of a ``[... .model]`` table are ``config_class`` fields, checked when the config loads (not
    after the features are fitted); the ``user`` / ``item`` schemas come from the feature spec."""
    for key in ("user", "item"):
        if key in model:
            raise ValueError(f"{where} must not set {key!r}: the schemas come from the fitted feature spec")
    valid = {f.name for f in dataclasses.fields(config_class)} - {"user", "item"}
    unknown = sorted(set(model) - valid)
    if unknown:
        raise UnknownKeyError(f"{where}.{unknown[0]}",
                              f"unknown key {unknown[0]!r} in [{where}]; valid: {', '.join(sorted(valid))}")
