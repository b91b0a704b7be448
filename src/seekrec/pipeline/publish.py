"""Publishing a pipeline bundle into the model registry, as one version of kind ``pipeline``.

A bundle says what it is through its ``pipeline.json``; a ``seekrec pipeline train`` run directory
holds one under ``bundle/`` beside the ``results.json`` whose validation figures become the
version's metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from seekrec.pipeline.artifacts import BUNDLE_DIR, PIPELINE_FILE, PIPELINE_KIND
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.training.run_dir import RunDir

STAGES_WITH_METRICS = ("two_tower", "din")


def find_bundle(path: str | Path) -> Path | None:
    """The pipeline bundle at ``path`` (a bundle, or a pipeline run directory's ``bundle/``), else None."""
    root = Path(path)
    for candidate in (root / BUNDLE_DIR, root):
        if (candidate / PIPELINE_FILE).is_file():
            return candidate
    return None


def publish_pipeline(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    """Publish a pipeline bundle, or the bundle of a ``seekrec pipeline train`` run directory (whose
    results.json supplies the metrics); the manifest records the feature spec version."""
    root = Path(path)
    bundle = find_bundle(root)
    if bundle is None:
        raise RegistryError(f"{root}: neither a pipeline bundle nor a pipeline run directory (no {PIPELINE_FILE}); "
                            "write one with `seekrec pipeline train`")
    meta = json.loads((bundle / PIPELINE_FILE).read_text(encoding="utf-8"))
    metrics = _run_metrics(RunDir(root).results_file) if bundle != root else {}
    name = f"pipeline({meta.get('stages', {}).get('retriever', 'two_tower')}->din)"
    return registry.publish_bundle(bundle, kind=PIPELINE_KIND, name=name, metrics=metrics, promote=promote,
                                   data_spec={"feature_spec_version": meta["spec_version"], "n_items": meta["n_items"]})


def _run_metrics(results_path: Path) -> dict[str, Any]:
    """``<stage>/valid/<metric>`` for the finite validation figures of each trained stage."""
    if not results_path.is_file():
        return {}
    results = json.loads(results_path.read_text(encoding="utf-8"))
    metrics: dict[str, Any] = {}
    for stage in STAGES_WITH_METRICS:
        for key, value in (results.get(stage, {}).get("valid") or {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"{stage}/valid/{key}"] = value
    return metrics
