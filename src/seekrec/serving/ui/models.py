"""The Models page's view of the registry: every retained version with its metrics, which arm serves it, and
the training curves of the offline run the current version descends from.

Reads files only (manifests, pointers, a run's ``metrics.jsonl``), so it runs in a worker thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seekrec.registry import ModelRegistry, RegistryError
from seekrec.serving.metrics import published_at
from seekrec.serving.ui.schemas import CurvePoint, ModelsView, VersionRow

CURVE_KEYS = ("loss", "ndcg@10", "hr@10")  # train loss per step; validation metrics per evaluation
MAX_PARENTS = 10_000  # an online trainer's chain of versions back to its offline base

# training.run_dir.METRICS_FILE, named again: the server imports no training code (tests/test_layers.py),
# and tests/serving/test_console.py holds the two equal
RUN_METRICS_FILE = "metrics.jsonl"


def models_view(registry: ModelRegistry, served: dict[str, str]) -> ModelsView:
    """Versions oldest first; ``served``: arm -> version served now."""
    channels = registry.channels()
    pins = registry.pins()
    rows = []
    for info in registry.versions():
        extra = registry.manifest(info.version).get("extra", {})
        rows.append(VersionRow(
            version=info.version, created=info.created, model_name=info.model_name, metrics=info.metrics,
            parent=info.parent, current=info.is_current,
            published_at=published_at({"published_at": extra.get("published_at"), "created": info.created}),
            offset=extra.get("offset"), events_trained=extra.get("events_trained"),
            served_by=sorted(arm for arm, version in served.items() if version == info.version),
            channels=sorted(name for name, version in channels.items() if version == info.version),
            pinned=info.version in pins))
    current = registry.current()
    curves_of, curves = training_curves(registry, current) if current is not None else (None, {})
    return ModelsView(versions=rows, current=current, rollback_target=registry.rollback_target(), curves=curves,
                      curves_of=curves_of)


def training_curves(registry: ModelRegistry, version: str) -> tuple[str | None, dict[str, list[CurvePoint]]]:
    """The curves of the first version up ``version``'s parent chain that was published from a run directory
    still on disk: ``(that version, {"train loss": ..., "valid ndcg@10": ...})``; ``(None, {})`` if none is."""
    for _ in range(MAX_PARENTS):
        try:
            manifest = registry.manifest(version)
        except RegistryError:  # the base fell out of retention
            return None, {}
        extra = manifest.get("extra", {})
        run_dir = extra.get("run_dir")
        if isinstance(run_dir, str) and (Path(run_dir) / RUN_METRICS_FILE).is_file():
            return version, _curves(Path(run_dir) / RUN_METRICS_FILE)
        parent = manifest.get("parent") or extra.get("base_version")
        if not isinstance(parent, str) or parent == version:
            return None, {}
        version = parent
    return None, {}


def _curves(path: Path) -> dict[str, list[CurvePoint]]:
    curves: dict[str, list[CurvePoint]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record: dict[str, Any] = json.loads(line) if line.strip() else {}
        kind = record.get("kind")
        if kind not in ("train", "valid") or not isinstance(record.get("step"), (int, float)):
            continue
        for key in CURVE_KEYS:
            value = record.get(key)
            if isinstance(value, (int, float)) and value == value:
                curves.setdefault(f"{kind} {key}", []).append(CurvePoint(step=record["step"], value=value))
    return curves
