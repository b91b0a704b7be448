"""Experiment definitions: layers of orthogonal experiments, their arms, metrics, guardrails and rollouts.

Read from TOML that is versioned with the serve config (``ExperimentsConfig.load``) and validated when
built, so a share that does not add up, an unknown metric or two experiments claiming the same users
fail before any user is assigned. Assignment (``assignment.py``) and the rollout controller
(``rollout.py``) only read these objects.

Layers make experiments orthogonal: each layer hashes users with its own salt, so a user's arm in one
layer says nothing about their arm in another, and experiments in different layers can run on the same
users at once. Within a layer, experiments own disjoint bucket ranges, so a user is in at most one of them.
Orthogonal layers must change different things; at most one layer chooses the model version and a
``params`` key belongs to one layer, which is checked here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekrec.config import from_table, load_config
from seekrec.registry import RegistryError, parse_channel, parse_version

N_BUCKETS = 10_000  # buckets per hash (every assignment: layered experiments and serve --arm)
CURRENT = "current"  # an arm that follows the registry's CURRENT pointer (the live online model)
CHANNEL = "channel:"  # "channel:<name>": an arm that follows a registry channel (its own online learner)
METRICS = ("ctr", "clicks_per_user", "value_per_user", "coverage", "novelty", "latency_p99_ms")
CEILING_GUARDRAILS = ("latency_p99_ms", "error_rate")  # `max`: the treatment's figure must stay at or below it
DROP_GUARDRAILS = ("ctr", "clicks_per_user")  # `max_relative_drop`: treatment vs control, always-valid test
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_name(kind: str, value: Any) -> None:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ValueError(f"{kind} name {value!r} must be 1-64 letters, digits, '.', '_' or '-' (starting with a "
                         "letter or digit)")


def _within(kind: str, table: Mapping[str, Any], cls: type, section: str) -> Any:
    """``cls`` from a TOML table, its errors prefixed with ``kind 'name':`` so they say where they are."""
    try:
        return from_table(cls, table, section)
    except ValueError as exc:
        prefix = f"{kind} {table.get('name')!r}: "
        message = str(exc)
        raise ValueError(message if message.startswith(prefix) else prefix + message) from exc


def parse_arm_version(text: str) -> str:
    """What an arm serves: ``"current"``, ``"channel:<name>"`` or a registry version (short forms accepted)."""
    if text == CURRENT:
        return text
    try:
        if isinstance(text, str) and text.startswith(CHANNEL):
            return CHANNEL + parse_channel(text[len(CHANNEL):])
        return parse_version(text)
    except RegistryError as exc:
        raise ValueError(f"version must be {CURRENT!r}, '{CHANNEL}<name>' or a registry version: {exc}") from exc


def channel_of(version: str) -> str | None:
    """The channel name of an arm version ``"channel:<name>"``, else None."""
    return version[len(CHANNEL):] if version.startswith(CHANNEL) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass(frozen=True)
class Arm:
    """One arm: its share of its experiment's users and what it changes for them.

    ``version``: the registry version it serves (``"v000003"``, short forms accepted), ``"current"``, or
    ``"channel:<name>"`` (the head of a registry channel, which that arm's own online learner moves); None leaves the model to another layer or the server. ``params``: flat settings the server may apply
    (``explore_epsilon = 0.1``, ``k = 20``); read-only by convention. A rollout's arms take their shares
    from the rollout stage, so they leave ``share`` unset.
    """

    name: str
    share: float | None = None
    version: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("arm", self.name)
        if self.share is not None:
            if not _is_number(self.share) or not 0 < self.share <= 1:
                raise ValueError(f"arm {self.name!r}: share must be a number in (0, 1], got {self.share!r}")
            object.__setattr__(self, "share", float(self.share))
        if self.version is not None:
            try:
                object.__setattr__(self, "version", parse_arm_version(self.version))
            except ValueError as exc:
                raise ValueError(f"arm {self.name!r}: {exc}") from exc
        if not isinstance(self.params, Mapping):
            raise ValueError(f"arm {self.name!r}: params must be a table such as {{ k = 20 }}, got {self.params!r}")
        for key, value in self.params.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"arm {self.name!r}: params key {key!r} must be an identifier such as explore_epsilon")
            if not (isinstance(value, (bool, str)) or _is_number(value)):
                raise ValueError(f"arm {self.name!r}: params.{key} must be a finite number, a string or a "
                                 f"boolean, got {value!r}")
        object.__setattr__(self, "params", dict(self.params))


@dataclass(frozen=True)
class Metrics:
    """What the experiment is read on: one ``primary`` metric decides, ``secondary`` ones are reported."""

    primary: str = "ctr"
    secondary: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "secondary", tuple(self.secondary))
        for name in (self.primary, *self.secondary):
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        if self.primary in self.secondary or len(set(self.secondary)) != len(self.secondary):
            raise ValueError(f"metrics: {self.primary!r} + {list(self.secondary)} list a metric twice; "
                             "name each metric once")


@dataclass(frozen=True)
class Guardrail:
    """A limit the treatment must respect, judged once each compared arm has ``min_users`` users.

    Either ``max`` (a ceiling on the treatment's ``latency_p99_ms`` or ``error_rate``) or
    ``max_relative_drop`` (treatment at most this fraction below control on ``ctr`` or
    ``clicks_per_user``, judged with an always-valid test so that looking often is safe; rollout.py).
    """

    metric: str
    max: float | None = None
    max_relative_drop: float | None = None
    min_users: int = 500

    def __post_init__(self) -> None:
        where = f"guardrail {self.metric!r}"
        if self.metric not in CEILING_GUARDRAILS + DROP_GUARDRAILS:
            raise ValueError(f"unknown guardrail metric {self.metric!r}; choose from "
                             f"{', '.join(CEILING_GUARDRAILS + DROP_GUARDRAILS)}")
        if (self.max is None) == (self.max_relative_drop is None):
            raise ValueError(f"{where}: set exactly one of max (for {', '.join(CEILING_GUARDRAILS)}) or "
                             f"max_relative_drop (for {', '.join(DROP_GUARDRAILS)})")
        if self.metric in CEILING_GUARDRAILS:
            if self.max is None:
                raise ValueError(f"{where}: a ceiling metric takes max, not max_relative_drop")
            upper = 1.0 if self.metric == "error_rate" else math.inf
            if not _is_number(self.max) or not 0 < self.max <= upper:
                raise ValueError(f"{where}: max must be a number in (0, {upper}], got {self.max!r}")
            object.__setattr__(self, "max", float(self.max))
        else:
            if self.max_relative_drop is None:
                raise ValueError(f"{where}: a metric compared with control takes max_relative_drop, not max")
            if not _is_number(self.max_relative_drop) or not 0 < self.max_relative_drop < 1:
                raise ValueError(f"{where}: max_relative_drop must be a fraction in (0, 1), e.g. 0.10, "
                                 f"got {self.max_relative_drop!r}")
            object.__setattr__(self, "max_relative_drop", float(self.max_relative_drop))
        if not _is_count(self.min_users, 2):
            raise ValueError(f"{where}: min_users must be an integer >= 2, got {self.min_users!r}")

    @property
    def relative(self) -> bool:
        """True when judged against control (``max_relative_drop``), False for a ceiling (``max``)."""
        return self.max_relative_drop is not None


@dataclass(frozen=True)
class Rollout:
    """A gradual rollout of the treatment: stage ``s`` of ``steps`` gives it ``s / steps`` of the users.

    ``alpha`` is the chance, over the whole rollout, that a healthy treatment is rolled back by a
    relative guardrail; each stage's test spends ``alpha / steps`` of it. ``tau2`` is the variance of
    the mSPRT's normal mixture over the relative effect (treatment / control - 1, beyond the allowed
    drop): the test is quickest for effects of about ``sqrt(tau2)``. The default 0.01 targets a treatment
    ten points of control below the allowed drop (e.g. -20% with a 10% guardrail); far larger breaks,
    such as a model returning random items, are still caught within a few hundred users.
    ``srm_alpha``: the level of the sample-ratio check made once per stage (``srm_check``).
    """

    steps: int = 10
    min_users_per_step: int = 1000
    min_seconds_per_step: float = 600.0
    alpha: float = 0.05
    tau2: float = 0.01
    srm_alpha: float = 0.001

    def __post_init__(self) -> None:
        if not _is_count(self.steps, 1) or self.steps > 100:
            raise ValueError(f"rollout.steps must be an integer in 1..100, got {self.steps!r}")
        if not _is_count(self.min_users_per_step, 2):
            raise ValueError(f"rollout.min_users_per_step must be an integer >= 2, got {self.min_users_per_step!r}")
        if not _is_number(self.min_seconds_per_step) or self.min_seconds_per_step < 0:
            raise ValueError(f"rollout.min_seconds_per_step must be a number >= 0, got {self.min_seconds_per_step!r}")
        object.__setattr__(self, "min_seconds_per_step", float(self.min_seconds_per_step))
        if not _is_number(self.alpha) or not 0 < self.alpha < 1:
            raise ValueError(f"rollout.alpha must lie in (0, 1), e.g. 0.05, got {self.alpha!r}")
        if not _is_number(self.tau2) or self.tau2 <= 0:
            raise ValueError(f"rollout.tau2 must be a positive number, e.g. 0.01, got {self.tau2!r}")
        if not _is_number(self.srm_alpha) or not 0 < self.srm_alpha < 1:
            raise ValueError(f"rollout.srm_alpha must lie in (0, 1), e.g. 0.001, got {self.srm_alpha!r}")
        for name in ("alpha", "tau2", "srm_alpha"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def share(self, stage: int) -> float:
        """The treatment's share of the experiment's users at ``stage`` (0: nobody, ``steps``: everybody)."""
        if not _is_count(stage, 0) or stage > self.steps:
            raise ValueError(f"rollout stage must be an integer in 0..{self.steps}, got {stage!r}")
        return stage / self.steps

    @property
    def stage_alpha(self) -> float:
        """The level of each stage's sequential test: ``alpha`` split evenly over the stages (Bonferroni)."""
        return self.alpha / self.steps


@dataclass(frozen=True)
class Experiment:
    """Arms compared on the users of a bucket range of one layer (``buckets = [start, end)``; None: all).

    ``control`` names the baseline arm (default: the first). With ``rollout`` the experiment must have
    exactly two arms, control and one treatment, whose shares follow the rollout stage. With ``interleave``
    its two arms are two model versions that answer every request of its users together: each list is a
    team-draft interleaving of both rankings (``evaluation.interleaving``), and clicks vote for a ranker.
    """

    name: str
    arms: tuple[Arm, ...]
    control: str | None = None
    buckets: tuple[int, int] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    guardrails: tuple[Guardrail, ...] = ()
    rollout: Rollout | None = None
    interleave: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("experiment", self.name)
        where = f"experiment {self.name!r}"
        arms = tuple(a if isinstance(a, Arm) else Arm(**a) for a in self.arms)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "guardrails", tuple(self.guardrails))
        names = [a.name for a in arms]
        if not arms:
            raise ValueError(f"{where}: needs at least one arm")
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: arm names must be unique, got {names}")
        object.__setattr__(self, "control", names[0] if self.control is None else self.control)
        if self.control not in names:
            raise ValueError(f"{where}: control {self.control!r} is not one of its arms {names}")
        self._check_shares(where)
        if self.buckets is not None:
            start, end = self.buckets
            if not (_is_count(start, 0) and _is_count(end, 1) and start < end <= N_BUCKETS):
                raise ValueError(f"{where}: buckets must be [start, end) with 0 <= start < end <= {N_BUCKETS}, "
                                 f"got {list(self.buckets)}")
            object.__setattr__(self, "buckets", (start, end))
        metrics = [g.metric for g in self.guardrails]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"{where}: one guardrail per metric, got {metrics}")
        if len(arms) < 2 and any(g.relative for g in self.guardrails):
            raise ValueError(f"{where}: a max_relative_drop guardrail compares treatment with control; "
                             "add a treatment arm or use a max guardrail")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> Experiment:
        """From a TOML table; errors in its arms, metrics, guardrails or rollout name the experiment."""
        return _within("experiment", table, cls, "layers.experiments")

    def _check_shares(self, where: str) -> None:
        if self.interleave:
            if not isinstance(self.interleave, bool) or self.rollout is not None or len(self.arms) != 2 \
                    or any(a.version is None or a.share is not None for a in self.arms):
                raise ValueError(f"{where}: interleave = true needs exactly two arms, each with a version and no "
                                 "share (every request gets both rankers), and no rollout")
            return
        if self.rollout is not None:
            if len(self.arms) != 2:
                raise ValueError(f"{where}: a rollout needs exactly two arms, control and treatment, got "
                                 f"{[a.name for a in self.arms]}")
            for arm in self.arms:
                if arm.share is not None:
                    raise ValueError(f"{where}: arm {arm.name!r} sets share, but a rollout's shares follow its "
                                     "stage; remove share")
            return
        for arm in self.arms:
            if arm.share is None:
                raise ValueError(f"{where}: arm {arm.name!r} has no share; give every arm a share, summing to 1")
        total = sum(a.share for a in self.arms)  # type: ignore[misc]
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"{where}: arm shares must sum to 1, got {total:g} "
                             f"({', '.join(f'{a.name}={a.share:g}' for a in self.arms)})")

    def arm(self, name: str) -> Arm:
        """The arm called ``name``; ValueError naming the arms when there is none."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ValueError(f"experiment {self.name!r} has no arm {name!r}; arms: {[a.name for a in self.arms]}")

    @property
    def treatment(self) -> str:
        """The rollout's treatment arm: the one that is not control (rollout experiments only)."""
        if self.rollout is None:
            raise ValueError(f"experiment {self.name!r} has no rollout, so no single treatment arm")
        return next(a.name for a in self.arms if a.name != self.control)

    @property
    def bucket_range(self) -> tuple[int, int]:
        """``[start, end)`` of the layer buckets it owns."""
        return self.buckets if self.buckets is not None else (0, N_BUCKETS)


@dataclass(frozen=True)
class Layer:
    """Experiments sharing one split of the users; ``salt`` (default: the name) seeds that split."""

    name: str
    experiments: tuple[Experiment, ...]
    salt: str | None = None

    def __post_init__(self) -> None:
        _check_name("layer", self.name)
        object.__setattr__(self, "salt", self.name if self.salt is None else self.salt)
        if not isinstance(self.salt, str) or not self.salt:
            raise ValueError(f"layer {self.name!r}: salt must be a non-empty string, got {self.salt!r}")
        experiments = tuple(e if isinstance(e, Experiment) else Experiment(**e) for e in self.experiments)
        object.__setattr__(self, "experiments", experiments)
        if not experiments:
            raise ValueError(f"layer {self.name!r}: needs at least one experiment; remove the layer otherwise")
        if len(experiments) > 1:
            for exp in experiments:
                if exp.buckets is None:
                    raise ValueError(f"layer {self.name!r}: experiment {exp.name!r} owns the whole layer but shares "
                                     f"it with {len(experiments) - 1} other(s); give each buckets = [start, end)")
        ranked = sorted(experiments, key=lambda e: e.bucket_range)
        for first, second in zip(ranked, ranked[1:]):
            if second.bucket_range[0] < first.bucket_range[1]:
                raise ValueError(f"layer {self.name!r}: experiments {first.name!r} {list(first.bucket_range)} and "
                                 f"{second.name!r} {list(second.bucket_range)} overlap; a user can be in only one "
                                 "experiment of a layer, so make the ranges disjoint or use another layer")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> Layer:
        """From a TOML table; errors in its experiments name the layer."""
        return _within("layer", table, cls, "layers")

    @property
    def sets_version(self) -> bool:
        """Whether any arm of this layer chooses the model version."""
        return any(a.version is not None for e in self.experiments for a in e.arms)


@dataclass(frozen=True)
class ExperimentsConfig:
    """Every running experiment, by layer: the file the servers, the rollout controller and the reports share."""

    layers: tuple[Layer, ...] = ()

    def __post_init__(self) -> None:
        layers = tuple(layer if isinstance(layer, Layer) else Layer(**layer) for layer in self.layers)
        object.__setattr__(self, "layers", layers)
        for kind, values in (("layer names", [layer.name for layer in layers]),
                             ("layer salts", [layer.salt for layer in layers]),
                             ("experiment names", [e.name for layer in layers for e in layer.experiments])):
            duplicates = sorted({str(v) for v in values if values.count(v) > 1})
            if duplicates:
                hint = " (layers with one salt would split users identically)" if kind == "layer salts" else ""
                raise ValueError(f"{kind} must be unique{hint}, repeated: {', '.join(duplicates)}")
        versioned = [layer.name for layer in layers if layer.sets_version]
        if len(versioned) > 1:
            raise ValueError(f"layers {versioned} all set arm versions; only one layer may choose the model version")
        owner: dict[str, str] = {}
        for layer in layers:
            for key in {k for e in layer.experiments for a in e.arms for k in a.params}:
                if owner.setdefault(key, layer.name) != layer.name:
                    raise ValueError(f"params key {key!r} is set in layers {owner[key]!r} and {layer.name!r}; "
                                     "orthogonal layers must change different things")

    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``, in whichever layer it is."""
        for layer in self.layers:
            for exp in layer.experiments:
                if exp.name == name:
                    return exp
        defined = [e.name for layer in self.layers for e in layer.experiments]
        raise ValueError(f"no experiment {name!r}; defined: {defined}")

    @property
    def rollouts(self) -> tuple[Experiment, ...]:
        """The experiments with a rollout, in file order."""
        return tuple(e for layer in self.layers for e in layer.experiments if e.rollout is not None)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentsConfig:
        """Read a TOML file (its ``[experiments]`` table if present, else the top level), e.g. the serve
        config itself. Every mistake is one ValueError naming the file and the experiment."""
        return load_config(cls, path, table="experiments")
