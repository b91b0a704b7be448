"""Rollout state files: the single source of truth that the controller writes and every replica polls.

Layout under ``root`` (a local directory, or shared storage with POSIX rename and ``flock``)::

    <experiment>.json   one RolloutState (RolloutState.to_json), replaced atomically on every write
    .lock               ``flock`` held while a write compares revisions and renames

A write is a compare-and-swap: under the lock it re-reads the file and refuses (``StaleRevisionError``)
unless the revision on disk is the one the writer's state was read at, then writes revision + 1. So
an operator's ``rollback`` and the controller's ``advance`` made on the same revision cannot both land;
the loser re-reads and decides again. Readers need no lock: ``os.replace`` shows them the old file or
the new one, never half of either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from seekrec.experiments.definition import Experiment, ExperimentsConfig
from seekrec.experiments.guardrails import Snapshot
from seekrec.experiments.rollout import Decision, RolloutState, apply, decide
from seekrec.io import atomic_write_json, exclusive_lock

LOCK_FILE = ".lock"


class StaleRevisionError(RuntimeError):
    """A write based on a revision that another writer has replaced; re-read, decide again, write again."""


class RolloutStore:
    """Rollout states as ``root/<experiment>.json``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, experiment: str) -> Path:
        """The state file of ``experiment``."""
        return self.root / f"{experiment}.json"

    def read(self, experiment: str) -> RolloutState | None:
        """The state of ``experiment``, or None when its rollout has not started."""
        path = self.path(experiment)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable rollout state ({exc})") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(doc).__name__}")
        try:
            return RolloutState.from_json(doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid rollout state ({exc})") from exc

    def write(self, state: RolloutState) -> RolloutState:
        """Write ``state`` as revision ``state.revision + 1`` and return what was written; refused with
        StaleRevisionError when the file's revision is not ``state.revision`` (0: no file yet)."""
        with self._locked():
            current = self.read(state.experiment)
            on_disk = 0 if current is None else current.revision
            if on_disk != state.revision:
                raise StaleRevisionError(
                    f"{self.path(state.experiment)}: revision {on_disk} on disk, this write was based on revision "
                    f"{state.revision}; re-read the state, decide again and write again")
            written = dataclasses.replace(state, revision=state.revision + 1)
            atomic_write_json(self.path(state.experiment), written.to_json())
        return written

    def start(self, experiment: Experiment, now: float) -> RolloutState:
        """Start the rollout of ``experiment`` at its first stage; refused when a state exists already."""
        return self.write(RolloutState.start(experiment, now))

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.root / LOCK_FILE)


def current_stages(store: RolloutStore, config: ExperimentsConfig) -> dict[str, int]:
    """``experiment -> stage`` of every rollout in ``config`` (0 where not started): what a replica feeds
    its ``Assigner`` after each poll. ValueError when a state's steps disagree with the definition."""
    stages = {}
    for experiment in config.rollouts:
        state = store.read(experiment.name)
        steps = experiment.rollout.steps  # type: ignore[union-attr]  # config.rollouts all have one
        if state is not None and state.steps != steps:
            raise ValueError(f"{store.path(experiment.name)}: {state.steps} steps, but the definition has {steps}; "
                             "roll back and restart the rollout")
        stages[experiment.name] = 0 if state is None else state.stage
    return stages


def controller_step(store: RolloutStore, experiment: Experiment, snapshot: Snapshot,
                    now: float) -> tuple[Decision, RolloutState]:
    """One look of the controller: read the state, decide on ``snapshot``, apply, write (compare-and-swap).

    A StaleRevisionError (an operator wrote in between) is the caller's to retry at the next look."""
    state = store.read(experiment.name)
    if state is None:
        raise ValueError(f"rollout of {experiment.name!r} has not started: no {store.path(experiment.name)}; "
                         "start it first (RolloutStore.start)")
    decision = decide(experiment, state, snapshot, now)
    return decision, store.write(apply(state, decision, now))
