"""``seekrec registry publish PATH``: one call that publishes whatever PATH says it is.

A pipeline bundle (or a ``seekrec pipeline train`` run holding one) records itself in its
``pipeline.json``; anything else is read as a ``seekrec train`` run, whose reader names the file it
misses. The kind lands in the version's manifest, so servers dispatch on it, never on file names.
Adding an artifact kind is one entry in ``PUBLISHERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from seekrec.pipeline.artifacts import PIPELINE_KIND
from seekrec.pipeline.publish import find_bundle, publish_pipeline
from seekrec.registry import MODEL_KIND, ModelRegistry


class Publisher(NamedTuple):
    """How one artifact kind is recognised on disk and published."""

    kind: str
    recognises: Callable[[Path], bool]
    publish: Callable[..., str]  # (registry, path, *, promote) -> version


def _publish_run(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    return registry.publish_run(path, promote=promote)


# first match wins; the last entry takes everything else
PUBLISHERS: tuple[Publisher, ...] = (
    Publisher(PIPELINE_KIND, lambda path: find_bundle(path) is not None, publish_pipeline),
    Publisher(MODEL_KIND, lambda path: True, _publish_run),
)


def publisher_for(path: str | Path) -> Publisher:
    """The publisher of the kind the directory at ``path`` records about itself."""
    return next(p for p in PUBLISHERS if p.recognises(Path(path)))


def publish_path(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    """Publish the run directory or bundle at ``path`` as a version of its kind; returns the version."""
    return publisher_for(path).publish(registry, path, promote=promote)
