"""Publishing pipeline artifacts into the model registry: a pipeline bundle as one version of kind
``pipeline``, a fine-tuned LLM run with its retriever as one version of kind ``llm_rerank``.

A bundle says what it is through its ``pipeline.json``; a ``seekrec pipeline train`` run directory
holds one under ``bundle/`` beside the ``results.json`` whose validation figures become the
version's metrics. An LLM run says what it is through its ``llm.json``.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from seekrec.pipeline.artifacts import BUNDLE_DIR, PIPELINE_FILE, PIPELINE_KIND
from seekrec.pipeline.llm_bundle import LLM_RERANK_FILE, LLM_RERANK_KIND, write_llm_bundle
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
    if meta.get("stages", {}).get("llm_run") is not None:
        raise RegistryError(f"{bundle}: its stages name an LLM run ({meta['stages']['llm_run']}), a directory outside "
                            "the bundle that the registry would not version; publish the LLM re-ranker as its own "
                            "version (`seekrec registry publish LLM_RUN`, kind llm_rerank) and this bundle saved "
                            "with stages.llm_run unset")
    metrics = _run_metrics(RunDir(root).results_file) if bundle != root else {}
    name = f"pipeline({meta.get('stages', {}).get('retriever', 'two_tower')}->din)"
    return registry.publish_bundle(bundle, kind=PIPELINE_KIND, name=name, metrics=metrics, promote=promote,
                                   data_spec={"feature_spec_version": meta["spec_version"], "n_items": meta["n_items"]})


def publish_llm_rerank(registry: ModelRegistry, path: str | Path, *, promote: bool = True) -> str:
    """Publish a fine-tuned LLM run (``llm.json``) with its retriever run as one ``llm_rerank`` version.

    The metrics are the LLM run's validation and test figures (``llm/<split>/<metric>``, from its
    results.json) and the retriever's (``retriever/<split>/<metric>``)."""
    root = Path(path)
    with tempfile.TemporaryDirectory(prefix="seekrec-llm-rerank-") as tmp:
        bundle = write_llm_bundle(root, Path(tmp) / "bundle")
        meta = json.loads((bundle / LLM_RERANK_FILE).read_text(encoding="utf-8"))
        retriever, llm = meta["retriever"], meta["llm"]
        metrics = {**{f"retriever/{k}": v for k, v in retriever["metrics"].items()},
                   **_split_metrics(RunDir(root).results_file, "llm")}
        return registry.publish_bundle(
            bundle, kind=LLM_RERANK_KIND, name=f"{retriever['model_name']}->llm({llm['kind']})", metrics=metrics,
            promote=promote, data_spec={**retriever["data_spec"], "n_items": meta["n_items"]},
            extra={"llm_run": llm["run"], "retriever_run": retriever["run"], "weight": llm["weight"],
                   "n_candidates": meta["n_candidates"]})


def _split_metrics(results_path: Path, prefix: str) -> dict[str, Any]:
    """``<prefix>/<split>/<metric>`` for the finite figures of the ``valid`` and ``test`` tables of a
    results.json (nested tables flattened with ``/``)."""
    if not results_path.is_file():
        return {}
    results = json.loads(results_path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(inner, f"{key}/{name}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = value

    for split in ("valid", "test"):
        walk(results.get(split) or {}, f"{prefix}/{split}")
    return out


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
