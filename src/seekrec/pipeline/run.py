"""``seekrec pipeline train`` / ``evaluate``: a config in, a run directory with a bundle and results out.

::

    OUT/
      config.json            the pipeline config as run (+ data manifest checksum)
      two_tower/, din/       metrics.jsonl (``seekrec plot OUT/two_tower``) and best/ checkpoints
      bundle/                the pipeline bundle (``load_bundle``)
      results.json           validation/test figures of both models, the ranker's calibration report
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seekrec.data.schema import read_manifest
from seekrec.data.splits import load_split
from seekrec.features.examples import OfflineRows, build_examples
from seekrec.io import sha256_file
from seekrec.pipeline.artifacts import BUNDLE_DIR, BundleError, load_bundle, save_bundle
from seekrec.pipeline.config import PipelineConfig, StageConfig
from seekrec.pipeline.evaluate import evaluate_pipeline
from seekrec.pipeline.features import item_catalog
from seekrec.pipeline.pipeline import Pipeline
from seekrec.pipeline.stages import TwoTowerRetriever
from seekrec.pipeline.train_din import train_din
from seekrec.pipeline.train_two_tower import train_two_tower
from seekrec.training.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass
class TrainedPipeline:
    """The trained pipeline (also saved as ``OUT/bundle``) and the results record (``OUT/results.json``)."""

    pipeline: Pipeline
    record: dict[str, Any]


def train_pipeline(config: PipelineConfig, data_dir: str | Path | None, out_dir: str | Path) -> TrainedPipeline:
    """Fit the feature spec, train the two-tower and DIN, calibrate, save the bundle and the results."""
    start = time.perf_counter()
    data_dir = data_dir if data_dir is not None else config.data.path
    if data_dir is None:
        raise ValueError("no dataset: pass --data DIR or set data.path in the config")
    out = Path(out_dir)
    run = RunDir(out)  # config.json and results.json here; a run directory per model below
    run.write_config({**config.to_dict(), "data_dir": str(data_dir),
                      "data_manifest_sha256": sha256_file(Path(data_dir) / "manifest.json"),
                      "data_source": read_manifest(data_dir)["source"]})
    data, split = load_split(data_dir, config.data.split)
    spec = config.features.spec_config(data).fit(data, split.train)
    examples = build_examples(spec, data, split.train)
    # Item rows as of the end of training, from training events only: nothing held out reaches the
    # index or the catalog. Serving refreshes them with update_item_features.
    catalog = item_catalog(spec, OfflineRows(spec, data, split.train), int(split.train.timestamps.max()) + 1)
    timings: dict[str, float] = {"features": round(time.perf_counter() - start, 2)}

    begin = time.perf_counter()
    two_tower, view, tt_fit = train_two_tower(config.two_tower, spec, data, split, examples, catalog,
                                              out / "two_tower")
    timings["two_tower"] = round(time.perf_counter() - begin, 2)
    begin = time.perf_counter()
    din, calibrator, din_fit, ranker = train_din(config.din, spec, data, split, examples, catalog, out / "din",
                                                 retriever=TwoTowerRetriever(two_tower, view))
    timings["din"] = round(time.perf_counter() - begin, 2)

    sequence_model, max_len, name = None, None, "sasrec"
    if config.sasrec_run is not None:
        sequence_model, max_len, name = load_sequence_run(config.sasrec_run, data.n_items)
    pipeline = Pipeline(spec, config.stages, two_tower, view, din, calibrator, catalog,
                        sequence_model=sequence_model, sequence_max_len=max_len, sequence_name=name)
    save_bundle(pipeline, out / BUNDLE_DIR)
    timings["total"] = round(time.perf_counter() - start, 2)
    record = {
        "name": config.name, "dataset": data.source, "n_items": data.n_items, "spec_version": spec.version,
        "two_tower": {"best_epoch": tt_fit.best_epoch, "epochs": tt_fit.epochs_run, "steps": tt_fit.steps,
                      "valid": tt_fit.best_valid, "seconds": round(tt_fit.seconds, 2),
                      "examples_per_second": round(tt_fit.examples_per_second, 1)},
        "din": {"best_epoch": din_fit.best_epoch, "epochs": din_fit.epochs_run, "steps": din_fit.steps,
                "valid": din_fit.best_valid, "seconds": round(din_fit.seconds, 2),
                "examples_per_second": round(din_fit.examples_per_second, 1), "report": ranker},
        "bundle": str(out / BUNDLE_DIR), "seconds": timings,
    }
    run.write_results(record)
    log.info("pipeline bundle written to %s in %.0fs", out / BUNDLE_DIR, timings["total"])
    return TrainedPipeline(pipeline, record)


def evaluate_bundle(bundle: str | Path, data_dir: str | Path, which: str = "test", *,
                    stages: StageConfig | None = None, grid: dict[str, list[Any]] | None = None,
                    ease: bool = True, split: str = "leave_one_out", progress: bool = False,
                    llm_run: str | Path | None = None, llm_device: str = "cpu") -> dict[str, Any]:
    """Load a bundle and evaluate it end to end on a prepared dataset (the one it was trained on).

    ``llm_run``: a fine-tuned LLM run whose re-ranking of each retriever's candidates is reported too."""
    pipeline = load_bundle(bundle, stages=stages)
    if llm_run is not None:
        pipeline = pipeline.with_stages(dataclasses.replace(pipeline.stages, llm_run=str(llm_run),
                                                            llm_device=llm_device))
    data, data_split = load_split(data_dir, split)
    if data.n_items != pipeline.spec.n_items:
        raise ValueError(f"{data_dir} has {data.n_items} items but the bundle's spec {pipeline.spec.n_items}; "
                         "evaluate on the dataset the bundle was trained on")
    return evaluate_pipeline(pipeline, data, data_split, which, grid=grid, baselines=("ease",) if ease else (),
                             progress=progress)


def load_sequence_run(run_dir: str | Path, n_items: int) -> tuple[torch.nn.Module, int, str]:
    """The best checkpoint of a ``seekrec train`` run: ``(model, max_len, registry name)``."""
    run = RunDir(Path(run_dir))
    spec = run.read_model()
    if spec.use_item_features:
        raise BundleError(run.path, "models trained with use_item_features cannot serve as retrievers here; "
                          "train one without side features")
    if spec.n_items != n_items:
        raise BundleError(run.model_file, f"the run's model has {spec.n_items} items but the dataset {n_items}; "
                          "use a run trained on this dataset")
    return run.load_best(spec.build()).eval(), spec.max_len, spec.name
