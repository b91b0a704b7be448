"""``seekrec registry publish PATH``: one call that publishes whatever PATH says it is.

Each artifact records what it is in a file of its own: a pipeline bundle (or a ``seekrec pipeline
train`` run holding one) in its ``pipeline.json``, a fine-tuned LLM run (published with its retriever
as an ``llm_rerank`` version) in its ``llm.json``, a ``seekrec train`` run in its ``config.json`` (read
through ``RunDir``). A path that records neither is refused, naming both. The kind lands in the
version's manifest, so servers dispatch on it, never on file names. Adding an artifact kind is one
entry in ``PUBLISHERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from seekrec.pipeline.artifacts import PIPELINE_KIND
from seekrec.pipeline.llm_bundle import LLM_RERANK_KIND, is_llm_run
from seekrec.pipeline.publish import find_bundle, publish_llm_rerank, publish_pipeline
from seekrec.registry import MODEL_KIND, ModelRegistry, RegistryError
from seekrec.training.run_dir import RunDir


class Publisher(NamedTuple):
    """How one artifact kind is recognised on disk and published."""

    kind: str
    recognises: Callable[[Path], bool]
    publish: Callable[..., str]  # (registry, path, *, promote) -> version


def _publish_run(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    return registry.publish_run(path, promote=promote)


# first match wins: pipeline and LLM run directories may hold a config.json of their own
PUBLISHERS: tuple[Publisher, ...] = (
    Publisher(PIPELINE_KIND, lambda path: find_bundle(path) is not None, publish_pipeline),
    Publisher(LLM_RERANK_KIND, is_llm_run, publish_llm_rerank),
    Publisher(MODEL_KIND, lambda path: RunDir(path).config_file.is_file(), _publish_run),
)


def publisher_for(path: str | Path) -> Publisher:
    """The publisher of the kind the directory at ``path`` records about itself."""
    found = next((p for p in PUBLISHERS if p.recognises(Path(path))), None)
    if found is None:
        raise RegistryError(f"{path}: nothing to publish: neither a `seekrec train` run (no config.json), a "
                            "pipeline bundle or `seekrec pipeline train` run (no pipeline.json), nor a fine-tuned "
                            "LLM run (no llm.json)")
    return found


def publish_path(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    """Publish the run directory or bundle at ``path`` as a version of its kind; returns the version."""
    return publisher_for(path).publish(registry, path, promote=promote)
