"""Multi-stage pipeline benchmark: retrieval recall, end-to-end NDCG against single-stage SASRec and EASE,
a two-tower ablation without the text column, and the ranker's AUC / gAUC / logloss / ECE before and
after calibration. Everything is chosen on validation; test is scored once per model.

    python benchmarks/pipeline.py --data data/ml-100k --config configs/ml-100k-pipeline.toml \\
        --sasrec-run runs/ml-100k-sasrec --out benchmarks/results/pipeline_ml100k.json

Without ``--sasrec-run`` a SASRec is first trained with ``configs/ml-100k-sasrec.toml`` (about 4 minutes on
2 CPU cores). Writes the JSON record and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.data.splits import load_split
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.features.examples import build_examples
from seekrec.io import atomic_write_json
from seekrec.pipeline.config import PipelineConfig, StageConfig
from seekrec.pipeline.evaluate import (
    STAGE_GRID,
    EvalUsers,
    evaluate_pipeline,
    final_positions,
    score_candidates,
)
from seekrec.pipeline.pipeline import Pipeline
from seekrec.pipeline.run import train_pipeline
from seekrec.pipeline.train_two_tower import TwoTowerScorer, train_two_tower
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.run_dir import RunDir

log = logging.getLogger("benchmarks.pipeline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"))
    parser.add_argument("--config", type=Path, default=Path("configs/ml-100k-pipeline.toml"))
    parser.add_argument("--sasrec-config", type=Path, default=Path("configs/ml-100k-sasrec.toml"))
    parser.add_argument("--sasrec-run", type=Path, help="reuse this `seekrec train` run instead of training SASRec")
    parser.add_argument("--work", type=Path, default=Path("runs/benchmark-pipeline"), help="run directories go here")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline_ml100k.json"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="pipeline config overrides")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = run(args)
    atomic_write_json(args.out, record)
    print(markdown(record))
    print(f"wrote {args.out}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    timings: dict[str, float] = {}
    sasrec_run, sasrec_train = args.sasrec_run, None
    if sasrec_run is None:
        sasrec_run = args.work / "sasrec"
        begin = time.perf_counter()
        sasrec_train = train_experiment(ExperimentConfig.load(args.sasrec_config), args.data, sasrec_run)
        timings["sasrec_train"] = round(time.perf_counter() - begin, 1)
    else:
        sasrec_train = RunDir(Path(sasrec_run)).read_results()
    config = PipelineConfig.load(args.config, [*args.overrides, f"sasrec_run={json.dumps(str(sasrec_run))}"])
    begin = time.perf_counter()
    trained = train_pipeline(config, args.data, args.work / "pipeline")
    timings["pipeline_train"] = round(time.perf_counter() - begin, 1)
    timings.update({f"pipeline_train.{k}": v for k, v in trained.record["seconds"].items()})

    data, split = load_split(args.data, config.data.split)
    pipeline = trained.pipeline
    begin = time.perf_counter()
    report = evaluate_pipeline(pipeline, data, split, "test", grid=STAGE_GRID)
    paired = paired_comparisons(pipeline, report, data, split)
    timings["evaluate"] = round(time.perf_counter() - begin, 1)

    # Ablation: the same two-tower recipe with the item tower reading no text (id, genres, year only).
    begin = time.perf_counter()
    no_text = dataclasses.replace(config.two_tower,
                                  drop_item_columns=(*config.two_tower.drop_item_columns, "text"))
    examples = build_examples(pipeline.spec, data, split.train)
    catalog = pipeline.catalog.index(torch.arange(data.n_items + 1))
    model, view, fit = train_two_tower(no_text, pipeline.spec, data, split, examples, catalog,
                                       args.work / "two_tower_no_text")
    ablated = Pipeline(pipeline.spec, pipeline.stages, model, view, pipeline.din, pipeline.calibrator, catalog)
    ablation = evaluate_pipeline(ablated, data, split, "test", grid=STAGE_GRID, baselines=())
    timings["ablation"] = round(time.perf_counter() - begin, 1)
    timings["total"] = round(time.perf_counter() - start, 1)
    return {
        "command": "python benchmarks/pipeline.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "overrides"),
        "dataset": data.source, "n_users": report["n_users"], "n_items": data.n_items,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "note": "2 CPU cores shared with other jobs; wall times are pessimistic"},
        "config": config.to_dict(),
        "retrieval": report["retrieval"],
        "pipeline": report["pipeline"],
        "selection": report["selection"],
        "single_stage": report["single_stage"],
        "paired_ndcg@10": paired,
        "ablation_no_text": {"retrieval": ablation["retrieval"]["two_tower"],
                             "pipeline": ablation["pipeline"]["two_tower"],
                             "valid": fit.best_valid, "best_epoch": fit.best_epoch},
        "two_tower_training": trained.record["two_tower"],
        "din_training": {k: v for k, v in trained.record["din"].items() if k != "report"},
        "ranker": trained.record["din"]["report"],
        "sasrec_training": {k: sasrec_train.get(k)
                            for k in ("valid", "best_epoch", "train_seconds", "seconds_to_best")},
        "seconds": timings,
    }


def ndcg_gains(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k of 0-based target ranks (negative: absent from the list)."""
    return np.where((ranks >= 0) & (ranks < k), 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def paired_comparisons(pipeline: Pipeline, report: dict[str, Any], data: Any, split: Any) -> dict[str, Any]:
    """Each pipeline (at its validation-chosen settings) against its retriever ranking alone, user by user:
    mean NDCG@10 difference and its standard error over the same test users."""
    users = EvalUsers.build(pipeline, data, split, "test")
    catalog = pipeline.catalog.index(torch.arange(data.n_items + 1))
    with torch.inference_mode():
        alone = {
            "two_tower": TwoTowerScorer(pipeline.two_tower_model, pipeline.retriever.view, catalog, users.user,
                                        users.held.users),
            "sasrec": ModelScorer(pipeline.sequence.model, pipeline.sequence.max_len),
        }
        out = {}
        for name, metrics in report["pipeline"].items():
            variant = pipeline.with_stages(StageConfig(**metrics["stages"]))
            scored = score_candidates(variant, users, variant.stages.n_candidates)
            positions, _ = final_positions(variant, scored, users)
            difference = ndcg_gains(positions) - ndcg_gains(evaluate(alone[name], split.test, data.n_items).ranks)
            se = float(difference.std(ddof=1) / np.sqrt(len(difference)))
            out[f"pipeline({name}) - {name} alone"] = {"mean": float(difference.mean()), "standard_error": se,
                                                       "z": float(difference.mean() / se) if se else 0.0}
    return out


def markdown(record: dict[str, Any]) -> str:
    """The docs table: one row per model, test split."""
    rows = ["| model | recall@100 | recall@500 | NDCG@10 | HR@10 |", "|---|---|---|---|---|"]
    for name, m in record["retrieval"].items():
        rows.append(f"| retrieval: {name} | {m['recall@100']:.4f} | {m['recall@500']:.4f} | | |")
    rows.append(f"| retrieval: two_tower without text | {record['ablation_no_text']['retrieval']['recall@100']:.4f} | "
                f"{record['ablation_no_text']['retrieval']['recall@500']:.4f} | | |")
    for name, m in record["pipeline"].items():
        rows.append(f"| pipeline: {name} (R={m['stages']['n_candidates']}) -> DIN | | | {m['ndcg@10']:.4f} | "
                    f"{m['hr@10']:.4f} |")
    m = record["ablation_no_text"]["pipeline"]
    rows.append(f"| pipeline: two_tower without text (R={m['stages']['n_candidates']}) -> DIN | | | "
                f"{m['ndcg@10']:.4f} | {m['hr@10']:.4f} |")
    for name, m in record["single_stage"].items():
        rows.append(f"| single stage: {name} | | | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} |")
    rows += ["", "| paired, test | mean NDCG@10 difference | standard error |", "|---|---|---|"]
    rows += [f"| {name} | {d['mean']:+.4f} | {d['standard_error']:.4f} |"
             for name, d in record["paired_ndcg@10"].items()]
    rows += ["", "| ranker (test) | AUC | gAUC | logloss | ECE |", "|---|---|---|---|---|"]
    for kind in ("raw", "calibrated"):
        m = record["ranker"]["test"][kind]
        rows.append(f"| DIN, {kind} | {m['auc']:.4f} | {m['gauc']:.4f} | {m['logloss']:.4f} | {m['ece']:.4f} |")
    m = record["ranker"]["test_popularity_negatives"]["raw"]
    rows.append(f"| DIN, raw, popularity negatives | {m['auc']:.4f} | {m['gauc']:.4f} | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
