"""Layered assignment: per layer, the experiment and arm of a user, from hashes alone.

Two hashes per layer, both ``bucket(salt, user)`` as in ``seekrec.serving.experiments`` (first 8 bytes
of sha256(``salt:user``) mod 10,000), so every replica and every process agrees without a shared table:

* the layer hash, salted with the layer's salt, picks the experiment that owns the user's bucket;
* the arm hash, salted with ``"<layer salt>/<experiment>"`` (``arm_salt``), picks the arm by cumulative
  share. Being a separate hash, it is independent of where in the layer the experiment's range lies.

A rollout experiment's treatment is ``arm bucket < round(share * 10,000)``, with the share set by the
rollout stage: raising the share only adds users, so a user treated at one stage stays treated at
every later one (monotone), and a user sees one model for the whole of a stage.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from seekrec.experiments.definition import N_BUCKETS, Arm, Experiment, ExperimentsConfig, Layer


def bucket(salt: str, user_id: str) -> int:
    """The user's bucket in ``0..N_BUCKETS-1``: first 8 bytes of sha256(``salt:user``), big-endian. The single
    A/B experiment of ``seekrec serve --arm`` buckets with it too (salt: the experiment's name), so a layer
    salted with that name keeps its users where they are."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % N_BUCKETS


def arm_salt(layer: Layer, experiment: Experiment) -> str:
    """The salt of an experiment's arm hash: distinct from the layer's, so arms and experiments split independently."""
    return f"{layer.salt}/{experiment.name}"


@dataclass(frozen=True)
class LayerAssignment:
    """A user's place in one layer; ``experiment`` and ``arm`` are None for buckets no experiment owns.

    ``stage`` is the rollout stage the arm was chosen at (None outside rollouts): outcome logs record it
    so the rollout controller reads each stage on the users served under it."""

    layer: str
    bucket: int
    experiment: str | None = None
    arm: Arm | None = None
    stage: int | None = None


@dataclass(frozen=True)
class Assignment:
    """A user's arms, one per layer (in the config's layer order)."""

    user_id: str
    layers: tuple[LayerAssignment, ...]

    def layer(self, name: str) -> LayerAssignment:
        """The assignment in layer ``name``."""
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise ValueError(f"no layer {name!r}; layers: {[e.layer for e in self.layers]}")

    @property
    def arms(self) -> dict[str, str]:
        """``experiment -> arm name`` for every experiment the user is in (what outcome logs record)."""
        return {e.experiment: e.arm.name for e in self.layers if e.experiment is not None and e.arm is not None}

    @property
    def version(self) -> str | None:
        """The model version this user's arms choose (at most one layer sets one), or None: the server's default."""
        return next((e.arm.version for e in self.layers if e.arm is not None and e.arm.version is not None), None)

    @property
    def params(self) -> dict[str, Any]:
        """The ``params`` of the user's arms merged (layers own disjoint keys, so nothing is overwritten)."""
        merged: dict[str, Any] = {}
        for entry in self.layers:
            if entry.arm is not None:
                merged.update(entry.arm.params)
        return merged


@dataclass(frozen=True)
class _Slot:
    """One experiment's range of a layer and how its arm buckets map to arms."""

    start: int
    end: int
    experiment: str
    salt: str
    arms: tuple[Arm, ...]
    edges: tuple[int, ...]  # arms[i] owns arm buckets [edges[i-1], edges[i])
    stage: int | None


class Assigner:
    """Assigns users to one arm per layer; ``stages`` gives each rollout experiment's current stage.

    A rollout missing from ``stages`` is at stage 0 (not started: everyone in control). Replicas build a
    new Assigner (``with_stages``) when the rollout state files change; building one is cheap.
    """

    def __init__(self, config: ExperimentsConfig, stages: Mapping[str, int] | None = None) -> None:
        self.config = config
        self.stages = dict(stages or {})
        rollouts = {e.name: e for e in config.rollouts}
        for name, stage in self.stages.items():
            if name not in rollouts:
                raise ValueError(f"stage given for {name!r}, which is not a rollout experiment; rollouts: "
                                 f"{sorted(rollouts)}")
            try:
                rollouts[name].rollout.share(stage)  # type: ignore[union-attr]  # validates the stage
            except ValueError as exc:
                raise ValueError(f"experiment {name!r}: {exc}") from exc
        self._layers = tuple((layer, self._slots(layer)) for layer in config.layers)

    def with_stages(self, stages: Mapping[str, int]) -> Assigner:
        """The same experiments at other rollout stages."""
        return Assigner(self.config, stages)

    def _slots(self, layer: Layer) -> tuple[_Slot, ...]:
        slots = []
        for exp in sorted(layer.experiments, key=lambda e: e.bucket_range):
            start, end = exp.bucket_range
            if exp.rollout is not None:
                stage = self.stages.get(exp.name, 0)
                cut = round(exp.rollout.share(stage) * N_BUCKETS)
                # treatment owns arm buckets [0, cut), control [cut, N): a higher stage only adds treated users
                arms: tuple[Arm, ...] = (exp.arm(exp.treatment), exp.arm(exp.control))  # type: ignore[arg-type]
                edges: tuple[int, ...] = (cut, N_BUCKETS)
            elif exp.interleave:  # both arms answer every request together: the first arm stands for the pair
                stage, arms, edges = None, exp.arms, (N_BUCKETS, N_BUCKETS)
            else:
                stage, arms = None, exp.arms
                cumulative = [round(N_BUCKETS * c) for c in accumulate(a.share for a in arms)]  # type: ignore[misc]
                cumulative[-1] = N_BUCKETS  # rounding must never leave the last buckets without an arm
                edges = tuple(cumulative)
            slots.append(_Slot(start, end, exp.name, arm_salt(layer, exp), arms, edges, stage))
        return tuple(slots)

    def assign(self, user_id: str) -> Assignment:
        """The user's experiment and arm in every layer."""
        return Assignment(user_id, tuple(self._assign_layer(layer, slots, user_id) for layer, slots in self._layers))

    @staticmethod
    def _assign_layer(layer: Layer, slots: tuple[_Slot, ...], user_id: str) -> LayerAssignment:
        b = bucket(layer.salt, user_id)  # type: ignore[arg-type]
        for slot in slots:
            if slot.start <= b < slot.end:
                index = bisect_right(slot.edges, bucket(slot.salt, user_id))
                return LayerAssignment(layer.name, b, slot.experiment, slot.arms[index], slot.stage)
        return LayerAssignment(layer.name, b)

