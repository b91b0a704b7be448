"""A pipeline bundle: one directory holding everything ``Pipeline`` needs, with no pickle.

::

    bundle/
      spec/                      the fitted feature spec (feature_spec.json + .safetensors, hash-checked)
      two_tower.safetensors      weights; two_tower.json: config, dropped item columns, spec version
      din.safetensors            weights; din.json: config, spec version
      calibrator.json            Platt / temperature scale and bias
      catalog.safetensors      item rows 0..N' (added items included)
      sequence.safetensors       optional next-item retriever; sequence.json: registry name, config, max_len
      pipeline.json              format, stage config, spec version, added items (written last)

A bundle is written under a temporary name and renamed into place. ``load_bundle`` refuses a bundle
whose models were trained with another feature spec than the one it holds: a model fed by a spec it
was not trained with would read ids from the wrong vocabulary without any visible error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model

from seekrec.features.batch import FeatureBatch
from seekrec.features.spec import FeatureSpec
from seekrec.io import atomic_write_json
from seekrec.models.calibration import Calibrator
from seekrec.models.factory import build_feature_model, build_model
from seekrec.models.weights import WeightsError, load_weights
from seekrec.pipeline.features import ItemView
from seekrec.pipeline.pipeline import Pipeline
from seekrec.pipeline.stage_config import StageConfig

BUNDLE_FORMAT = 2
# the item rows file of each readable format (format 1 spelled it "catalogue")
CATALOG_FILES = {1: "catalogue.safetensors", 2: "catalog.safetensors"}
PIPELINE_FILE = "pipeline.json"
PIPELINE_KIND = "pipeline"  # the registry kind of a published bundle
BUNDLE_DIR = "bundle"  # where ``seekrec pipeline train`` writes the bundle inside its run directory
SPEC_DIR = "spec"


class BundleError(ValueError):
    """A bundle that cannot be loaded as written; names the directory or file at fault."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


def save_bundle(pipeline: Pipeline, directory: str | Path) -> Path:
    """Write ``pipeline`` (models, spec, calibrator, catalog, stage config) to ``directory``."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    spec = pipeline.spec
    spec.save(tmp / SPEC_DIR)
    view = pipeline.retriever.view
    _save_model(tmp, "two_tower", pipeline.two_tower_model, {"config": feature_model_config(pipeline.two_tower_model),
                                                             "drop_item_columns": list(view.dropped),
                                                             "spec_version": spec.version})
    _save_model(tmp, "din", pipeline.din, {"config": feature_model_config(pipeline.din), "spec_version": spec.version})
    if pipeline.sequence is not None:
        model = pipeline.sequence.model
        _save_model(tmp, "sequence", model, {"name": pipeline.sequence_name, "max_len": pipeline.sequence.max_len,
                                             "config": dataclasses.asdict(model.config)})
    atomic_write_json(tmp / "calibrator.json", pipeline.calibrator.to_dict())
    save_file(_batch_tensors(pipeline.catalog), str(tmp / CATALOG_FILES[BUNDLE_FORMAT]))
    atomic_write_json(tmp / PIPELINE_FILE, {
        "format_version": BUNDLE_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec_version": spec.version,
        "n_items": spec.n_items,
        "stages": pipeline.stages.to_dict(),
        "new_raw_ids": list(pipeline.new_raw_ids),
        "has_sequence_model": pipeline.sequence is not None,
    })
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_bundle(directory: str | Path, *, stages: StageConfig | None = None) -> Pipeline:
    """Load a bundle; ``stages`` overrides the stage config it was saved with."""
    root = Path(directory)
    meta = _read_json(root / PIPELINE_FILE, "not a pipeline bundle: write one with `seekrec pipeline train`")
    if meta.get("format_version") not in CATALOG_FILES:
        raise BundleError(root / PIPELINE_FILE, f"format_version {meta.get('format_version')!r} is not one of "
                          f"{sorted(CATALOG_FILES)}; re-train the bundle with this version of seekrec")
    spec = FeatureSpec.load(root / SPEC_DIR)
    two_tower_meta = _read_json(root / "two_tower.json", "missing: the bundle is incomplete")
    din_meta = _read_json(root / "din.json", "missing: the bundle is incomplete")
    for name, recorded in (("pipeline.json", meta["spec_version"]), ("two_tower.json", two_tower_meta["spec_version"]),
                           ("din.json", din_meta["spec_version"])):
        if recorded != spec.version:
            raise BundleError(root, f"{name} was written for feature spec {str(recorded)[:12]}... but {SPEC_DIR}/ "
                              f"holds spec {spec.version[:12]}...: the models were trained with another spec. Put "
                              "back the spec they were trained with, or re-train the bundle on this spec")
    catalog = _load_batch(root / CATALOG_FILES[meta["format_version"]])
    view = ItemView.of(spec, two_tower_meta["drop_item_columns"])
    user = spec.schema("user")
    two_tower = build_feature_model("two_tower", two_tower_meta["config"], user=user, item=view.schema)
    _load_weights(two_tower, root / "two_tower.safetensors")
    din_catalog = catalog.index(torch.arange(spec.n_items + 1))
    din = build_feature_model("din", din_meta["config"], user=user, item=ItemView.of(spec).schema,
                              catalog=din_catalog)
    _load_weights(din, root / "din.safetensors")
    calibrator = Calibrator.from_dict(_read_json(root / "calibrator.json", "missing: the bundle is incomplete"))
    sequence_model, max_len, sequence_name = None, None, "sasrec"
    if meta.get("has_sequence_model"):
        sequence_meta = _read_json(root / "sequence.json", "missing: the bundle is incomplete")
        sequence_name, max_len = sequence_meta["name"], int(sequence_meta["max_len"])
        sequence_model = build_model(sequence_name, sequence_meta["config"], spec.n_items)
        _load_weights(sequence_model, root / "sequence.safetensors")
    stage_config = stages if stages is not None else StageConfig(**meta["stages"])
    return Pipeline(spec, stage_config, two_tower.eval(), view, din.eval(), calibrator, catalog,
                    sequence_model=sequence_model, sequence_max_len=max_len, sequence_name=sequence_name,
                    new_raw_ids=meta.get("new_raw_ids", ()))


def _save_model(root: Path, name: str, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    save_model(model, str(root / f"{name}.safetensors"))
    atomic_write_json(root / f"{name}.json", meta)


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    if not path.exists():
        raise BundleError(path, "missing: the bundle is incomplete")
    try:
        load_weights(model, path)
    except WeightsError as exc:
        raise BundleError(path, f"does not fit the model its JSON config describes ({exc})") from exc


def feature_model_config(model: torch.nn.Module) -> dict[str, Any]:
    """A feature model's config without its schemas (they are rebuilt from the spec on load)."""
    return {k: v for k, v in dataclasses.asdict(model.config).items() if k not in ("user", "item")}


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    if not path.exists():
        raise BundleError(path, missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"not valid JSON ({exc})") from exc


def _batch_tensors(batch: FeatureBatch) -> dict[str, torch.Tensor]:
    tensors = {f"categorical.{name}": value.contiguous() for name, value in batch.categorical.items()}
    for name in ("dense", "text"):
        value = getattr(batch, name)
        if value is not None:
            tensors[name] = value.contiguous()
    return tensors


def _load_batch(path: Path) -> FeatureBatch:
    if not path.exists():
        raise BundleError(path, "missing: the bundle is incomplete")
    tensors = load_file(str(path))
    categorical = {k.removeprefix("categorical."): v for k, v in tensors.items() if k.startswith("categorical.")}
    return FeatureBatch(categorical, tensors.get("dense"), tensors.get("text"))
