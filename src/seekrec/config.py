"""Experiment configuration: component dataclasses composed from TOML plus ``key=value`` overrides."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from seekrec.data.splits import SPLITS
from seekrec.io import read_toml
from seekrec.models.losses import LossConfig
from seekrec.training.config import TrainConfig


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
class ExperimentConfig:
    """Everything ``seekrec train`` needs; ``model`` holds the registry name plus its parameters."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if "name" not in self.model:
            raise ValueError("[model] needs a name, e.g. name = \"sasrec\"")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; valid: {sorted(known)}")
        sections = {"data": DataConfig, "loss": LossConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key in sections:
                kwargs[key] = _build(sections[key], key, value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
        """Read TOML (or start from defaults) and apply ``section.key=value`` overrides."""
        raw: dict[str, Any] = {}
        if path is not None:
            raw = read_toml(path)
        return cls.from_dict(apply_overrides(raw, overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``train.lr=3e-4`` -> ``raw["train"]["lr"] = 0.0003``; values parse as JSON when they can."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = value
    return out


def _build(cls: type, section: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table")
    valid = {f.name for f in fields(cls)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{section}]; valid: {sorted(valid)}")
    return cls(**values)
