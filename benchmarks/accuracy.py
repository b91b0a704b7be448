"""Accuracy of baselines and sequence models on one dataset, mean and std over seeds.

Every sequence model runs `seekrec train` (early stopping on validation NDCG@10; test metrics of the
best validation checkpoint) in its own process; baselines run `evaluate_baseline` (tuned on
validation). Writes a JSON result, a markdown table on stdout and a PNG bar chart.

    python benchmarks/accuracy.py --data data/ml-100k --seeds 0 1 2 --jobs 2 \
        --out benchmarks/results/accuracy_ml100k.json --png docs/accuracy_ml100k.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seekrec.evaluation.runner import evaluate_baseline
from seekrec.training.run_dir import RunDir

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr")
MODELS = {  # label -> (config file, overrides)
    "SASRec (bce)": ("configs/ml-100k-sasrec.toml", ["loss.name=bce"]),
    "SASRec (sampled softmax, 128 neg, log-Q)": ("configs/ml-100k-sasrec.toml",
                                                 ["loss.name=sampled_softmax", "loss.n_negatives=128"]),
    "SASRec (full softmax)": ("configs/ml-100k-sasrec.toml", []),
    "DeepSeek-rec (full softmax)": ("configs/ml-100k-deepseek.toml", []),
}


def train_once(label: str, seed: int, data: Path, work: Path, threads: int) -> dict:
    config, overrides = MODELS[label]
    out = work / f"{label.split()[0]}-{abs(hash(label)) % 10**6}-seed{seed}"
    cmd = [sys.executable, "-m", "seekrec.cli", "train", "--config", str(ROOT / config), "--data", str(data),
           "--out", str(out), f"train.seed={seed}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} seed {seed} failed:\n{proc.stderr[-2000:]}")
    record = RunDir(out).read_results()
    return {"label": label, "seed": seed, "config": config, "overrides": overrides, **record}


def summarize(runs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        out[label] = {
            k: {"mean": statistics.fmean(r["metrics"][k] for r in rs),
                "std": statistics.stdev([r["metrics"][k] for r in rs]) if len(rs) > 1 else 0.0}
            for k in KEYS
        }
        out[label]["valid_ndcg@10"] = statistics.fmean(r["valid"].get("ndcg@10", float("nan")) for r in rs) \
            if "valid" in rs[0] else None
        out[label]["seconds_to_best"] = statistics.fmean(r.get("seconds_to_best", r["seconds"]) for r in rs)
        out[label]["train_seconds"] = statistics.fmean(r.get("train_seconds", r["seconds"]) for r in rs)
        out[label]["n_runs"] = len(rs)
    return out


def markdown(summary: dict[str, dict], reference: str) -> str:
    ref = summary[reference]["ndcg@10"]["mean"]
    lines = ["| model | " + " | ".join(KEYS) + f" | NDCG@10 / {reference} | s to best | s total |",
             "|---|" + "---|" * (len(KEYS) + 3)]
    for label, s in summary.items():
        cells = [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" for k in KEYS]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {s['ndcg@10']['mean'] / ref:.2f}x | {s['seconds_to_best']:.0f} | {s['train_seconds']:.0f} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary)
    means = [summary[k]["ndcg@10"]["mean"] for k in labels]
    stds = [summary[k]["ndcg@10"]["std"] for k in labels]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.barh(labels, means, xerr=stds, color="tab:blue", alpha=0.8)
    ax.invert_yaxis()
    ax.set(xlabel="test NDCG@10 (full ranking, history masked)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="subset of model labels")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    start = time.time()
    runs = []
    for name in ("pop", "ease"):
        rec = evaluate_baseline(args.data, name)
        runs.append({"label": {"pop": "MostPop", "ease": "EASE"}[name], "seed": None, **rec})
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(train_once, label, seed, args.data, Path(work), args.threads)
                for label in args.models for seed in args.seeds]
        runs += [j.result() for j in jobs]
    summary = summarize(runs)
    result = {
        "command": "python " + " ".join(sys.argv),
        "dataset": runs[0]["dataset"],
        "protocol": "leave-one-out, full ranking, history masked; test metrics of the best validation checkpoint",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jobs": args.jobs,
                    "threads_per_job": args.threads},
        "wall_seconds": round(time.time() - start, 1),
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(summary, "EASE"))
    if args.png:
        plot(summary, args.png, f"{result['dataset']}: mean ± std over seeds {args.seeds}")


if __name__ == "__main__":
    main()
