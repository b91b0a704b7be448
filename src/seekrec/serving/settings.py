"""Typed server settings: where models, events and user histories come from, and how requests are served.

One frozen dataclass validated at construction, so a typo in a CLI flag or TOML file fails before
anything loads; the A/B experiment is part of it because which versions load depends on the arms.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from seekrec.io import read_toml
from seekrec.registry_artifacts import RegistryError, parse_version

CURRENT = "current"  # an arm that follows the registry's CURRENT pointer (the live online model)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ArmSettings:
    """One experiment arm: a pinned registry version (``"v000003"``) or ``"current"``, and its traffic weight."""

    name: str
    version: str = CURRENT
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"arm name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if self.version != CURRENT:
            try:
                object.__setattr__(self, "version", parse_version(self.version))
            except RegistryError as exc:
                raise ValueError(f"arm {self.name!r}: version must be {CURRENT!r} or a registry version: {exc}") from exc
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"arm {self.name!r}: weight must be a finite number > 0, got {self.weight!r}")

    @classmethod
    def parse(cls, spec: str) -> ArmSettings:
        """``"name=version:weight"`` (CLI form), e.g. ``"treatment=current:0.5"`` or ``"control=v3:0.5"``."""
        name, sep, rest = spec.partition("=")
        version, _, weight = rest.partition(":")
        if not sep or not version:
            raise ValueError(f"arm spec {spec!r} must look like name=version[:weight], e.g. control=v000003:0.5")
        try:
            return cls(name, version, float(weight) if weight else 1.0)
        except ValueError as exc:
            raise ValueError(f"arm spec {spec!r}: {exc}") from exc


@dataclass(frozen=True)
class ExperimentSettings:
    """An A/B experiment: users are bucketed by a hash of ``name`` and their id, so renaming it reshuffles."""

    name: str = "default"
    arms: tuple[ArmSettings, ...] = (ArmSettings("live"),)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"experiment name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        arms = tuple(a if isinstance(a, ArmSettings) else ArmSettings(**a) for a in self.arms)
        if not arms:
            raise ValueError("an experiment needs at least one arm")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        object.__setattr__(self, "arms", arms)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``seekrec serve`` needs.

    ``registry``: model registry root. ``event_log``: event log url (``open_event_log``). ``data_dir``:
    prepared dataset whose histories seed the users' recent items (``None``: histories come from the
    event log alone). ``history_len``: items kept per user (the seen-filter's reach; the model reads
    its own ``max_len`` of them). ``candidates``: ANN candidates scored per user. ``ann_threshold``:
    catalogs with at least this many items use HNSW. ``max_batch`` / ``max_wait_ms``: micro-batching.
    ``poll_interval_s``: how often the registry's CURRENT and the event log's tail are checked.
    ``trainer_consumer``: the online trainer's consumer name, for the lag metric. ``threads``: torch
    intra-op threads (0: torch's default, one per core). One is the default: micro-batches are small,
    and idle OpenMP workers spin on the cores that the event loop and other processes need.
    ``compile``: ``torch.compile`` each loaded sequence model's user encoder (less CPU per request,
    about a minute of compilation per version).
    """

    registry: Path
    event_log: str
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    default_k: int = 10
    history_len: int = 200
    candidates: int = 200
    ann_threshold: int = 50_000
    max_batch: int = 64
    max_wait_ms: float = 2.0
    poll_interval_s: float = 2.0
    trainer_consumer: str = "online-trainer"
    device: str = "cpu"
    threads: int = 1
    compile: bool = False
    experiment: ExperimentSettings = field(default_factory=ExperimentSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", Path(self.registry))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not str(self.event_log):
            raise ValueError("event_log is empty: pass an event log url, e.g. sqlite:///abs/path/events.db")
        object.__setattr__(self, "event_log", str(self.event_log))
        if isinstance(self.experiment, dict):
            object.__setattr__(self, "experiment", ExperimentSettings(**self.experiment))
        limits = {"port": (0, 65535), "default_k": (1, 1000), "history_len": (1, 100_000),
                  "candidates": (1, 100_000), "ann_threshold": (0, 10**12), "max_batch": (1, 4096),
                  "threads": (0, 1024)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"ServeSettings.{name} must be an integer in {low}..{high}, got {value!r}")
        for name in ("max_wait_ms", "poll_interval_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
                    or (name == "poll_interval_s" and value == 0):
                raise ValueError(f"ServeSettings.{name} must be a finite number of at least 0 "
                                 f"(poll_interval_s > 0), got {value!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"ServeSettings.compile must be true or false, got {self.compile!r}")
        if not self.trainer_consumer:
            raise ValueError("trainer_consumer must be a non-empty consumer name")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServeSettings:
        """Settings from a plain dict (a TOML ``[serve]`` table); unknown keys are named in the error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown serve setting(s) {unknown}; valid: {sorted(known)}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
                   and f.name not in raw]
        if missing:
            raise ValueError(f"missing serve setting(s) {missing}: set them in the [serve] table or pass "
                             + " and ".join(f"--{name.replace('_', '-')}" for name in missing))
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path | None, **overrides: Any) -> ServeSettings:
        """Read a TOML file (its ``[serve]`` table if present, else the top level; ``None``: no file);
        ``overrides`` win where not ``None``, so CLI flags can be passed straight through."""
        raw: dict[str, Any] = {}
        if path is not None:
            raw = read_toml(path)
            raw = dict(raw.get("serve", raw))
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw)
