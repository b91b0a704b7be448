"""What the int8 serve options cost in accuracy and save in CPU (docs/inference-int8.md).

For each model config it trains on a prepared dataset (`seekrec train`, ``train.max_epochs`` capped by
``--epochs``), publishes the run, and measures four arms: fp32, int8 user encoder (``--quantize int8``),
sq8 index (``--index-codec sq8``) and both.

- accuracy: test NDCG@10 / HR@10 with the offline evaluator. fp32 and the int8 encoder rank every item
  (``ModelScorer``); the sq8 arms rank the way the server does, exact scores over the index's candidates
  (``CandidateScorer``, ``--candidates`` as ``seekrec serve``), checked against the same path over an fp32
  index.
- CPU in process: ``time.process_time`` per request of ``SequencePredictor.recommend`` (encoder, ANN
  search, exact rescoring, top-k) at each batch size, one torch and one FAISS thread as the server runs;
  arms interleaved round by round and the median round kept, since the machine is shared. ``--dims``
  repeats it for untrained models of other widths (latency does not depend on training).
- load: ``serve_load.py``'s open-loop generator against two servers, fp32 and ``--quantize int8``, started
  together and fired at in alternation at each rate; server CPU per request and the highest rate held at
  p99 <= the budget.

    python benchmarks/int8.py --data data/ml-100k --epochs 10 --out benchmarks/results/int8.json \\
        --png docs/inference_int8.png
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_load.py beside this file
from serve_load import fire, held_rate, running_server  # noqa: E402

from seekrec.data.schema import InteractionData  # noqa: E402
from seekrec.data.splits import load_split  # noqa: E402
from seekrec.data.vocab import CATALOG_FILE  # noqa: E402
from seekrec.evaluation.candidates import CandidateScorer  # noqa: E402
from seekrec.evaluation.ranking import ModelScorer, evaluate  # noqa: E402
from seekrec.models.factory import build_model  # noqa: E402
from seekrec.models.quantization import quantize_encoder  # noqa: E402
from seekrec.online.histories import UserHistories  # noqa: E402
from seekrec.registry import ModelRegistry  # noqa: E402
from seekrec.retrieval.index import IndexConfig, ItemIndex, set_search_threads  # noqa: E402
from seekrec.serving.predictor import Query  # noqa: E402
from seekrec.serving.sequence_predictor import SequencePredictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"fp32": ("none", "fp32"), "int8 encoder": ("int8", "fp32"), "sq8 index": ("none", "sq8"),
        "int8 + sq8": ("int8", "sq8")}  # label -> (quantize, index_codec)
METRICS = ("ndcg@10", "hr@10")


def train(config: str, data: Path, out: Path, epochs: int) -> dict[str, Any]:
    """``seekrec train`` in its own process; returns its results record."""
    cmd = [sys.executable, "-m", "seekrec.cli", "train", "--config", str(ROOT / config), "--data", str(data),
           "--out", str(out), f"train.max_epochs={epochs}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {config} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def accuracy(registry: ModelRegistry, data: Path, candidates: int) -> dict[str, dict[str, float]]:
    """Test metrics of every arm and of the serving path over an fp32 index (the sq8 arms' reference)."""
    loaded = registry.load()
    model, max_len = loaded.model.eval(), int(loaded.manifest["model_config"]["max_len"])
    int8 = copy.deepcopy(model)
    quantize_encoder(int8)
    dataset, split = load_split(data, "leave_one_out")
    with torch.inference_mode():
        items = model.encode_items(torch.arange(1, model.n_items + 1))  # [N, D], the same for both encoders

    def index(codec: str) -> ItemIndex:
        return ItemIndex(items, ids=torch.arange(1, model.n_items + 1).numpy(), metric=model.similarity.kind,
                         config=IndexConfig(codec=codec))

    scorers = {"fp32": ModelScorer(model, max_len), "int8 encoder": ModelScorer(int8, max_len),
               "fp32 index, serving path": CandidateScorer(model, max_len, index("fp32"), candidates),
               "sq8 index": CandidateScorer(model, max_len, index("sq8"), candidates),
               "int8 + sq8": CandidateScorer(int8, max_len, index("sq8"), candidates)}
    out = {}
    for label, scorer in scorers.items():
        result = evaluate(scorer, split.test, dataset.n_items).metrics
        out[label] = {k: result[k] for k in METRICS}
    for label, row in out.items():
        row["ndcg@10_rel_loss_pct"] = 100 * (1 - row["ndcg@10"] / out["fp32"]["ndcg@10"])
    return out


def cpu_per_request(registry: ModelRegistry, data: Path, batch_sizes: Sequence[int], rounds: int,
                    arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{arm: {batch size: median CPU ms per request}}`` of ``SequencePredictor.recommend``."""
    predictors = {}
    for label in arms:
        quantize, codec = ARMS[label]
        predictors[label] = SequencePredictor.from_registry(registry, quantize=quantize,
                                                            index_config=IndexConfig(codec=codec))
    catalog = next(iter(predictors.values())).catalog
    histories = UserHistories.from_dataset(data, 200, catalog)
    users = [u for u in map(str, range(1, 10_000)) if histories.get(u)][:512]
    queries = [Query(u, tuple(histories.get(u)), 10) for u in users]
    out: dict[str, dict[str, float]] = {label: {} for label in arms}
    for b in batch_sizes:
        calls = max(5, 256 // b)
        batches = [queries[(i * b) % len(queries):][:b] for i in range(calls)]
        samples: dict[str, list[float]] = {label: [] for label in arms}
        for _ in range(rounds):  # interleaved: noise from other processes hits every arm alike
            for label, predictor in predictors.items():
                predictor.recommend(batches[0])  # warm
                start = time.process_time()
                for batch in batches:
                    predictor.recommend(batch)
                samples[label].append(1000 * (time.process_time() - start) / (calls * b))
        for label in arms:
            out[label][str(b)] = statistics.median(samples[label])
    return out


def publish_untrained(root: Path, base: ModelRegistry, dim: int) -> ModelRegistry:
    """The trained version's architecture at width ``dim``, random weights, with its catalog."""
    loaded = base.load()
    config = {**loaded.manifest["model_config"], "dim": dim}
    n_items = int(config.pop("n_items"))
    registry = ModelRegistry(root / f"registry-dim{dim}")
    registry.publish(build_model(loaded.manifest["model_name"], config, n_items),
                     model_name=loaded.manifest["model_name"], model_config={**config, "n_items": n_items},
                     extra_files={CATALOG_FILE: (loaded.directory / CATALOG_FILE).read_bytes()})
    return registry


def memory_per_item(registry: ModelRegistry) -> dict[str, float]:
    """Bytes per item of each index codec over the version's items, and of the fp32 embeddings the
    predictor keeps beside any index for the exact rescoring."""
    predictor = SequencePredictor.from_registry(registry)
    items = predictor.item_embeddings[1:]  # [N, D]
    out = {f"index {codec}": ItemIndex(items, config=IndexConfig(codec=codec)).bytes_per_item() for codec in ("fp32", "sq8")}
    return {**out, "rescoring embeddings fp32": float(items.element_size() * items.shape[1])}


def load_test(registry: ModelRegistry, data: Path, work: Path, rates: Sequence[float], seconds: float,
              budget_ms: float) -> dict[str, Any]:
    """fp32 and int8 servers side by side, fired at in alternation per rate."""
    rows: dict[str, list[dict]] = {"fp32": [], "int8 encoder": []}
    users = InteractionData.read(data).n_users  # MovieLens user ids are 1..n_users, as fire() sends them
    with running_server(registry.root, data, work, []) as (fp32, fp32_pid), \
            running_server(registry.root, data, work, ["--quantize", "int8"]) as (int8, int8_pid):
        servers = {"fp32": (fp32, fp32_pid), "int8 encoder": (int8, int8_pid)}
        for base, _ in servers.values():
            asyncio.run(fire(base, 20, 2.0, users, 99))  # warm-up
        for rate in rates:
            for label, (base, pid) in servers.items():
                row = asyncio.run(fire(base, rate, seconds, users, 1, pid))
                rows[label].append(row)
                print(label, json.dumps({k: row[k] for k in ("rate", "p50", "p99", "errors",
                                                             "server_cpu_ms_per_request")}), flush=True)
    return {"rows": rows, "held_rate": {label: held_rate(r, budget_ms) for label, r in rows.items()}}


def ratios(cpu: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """fp32 CPU per request over each arm's, per batch size (> 1: the arm uses less CPU)."""
    return {label: {b: cpu["fp32"][b] / ms for b, ms in row.items()} for label, row in cpu.items() if label != "fp32"}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, key, run) for name, run in results["models"].items()
              for key in ("cpu_ms_per_request", *[f"cpu_ms_per_request_dim{d}" for d in results["dims"]]) if key in run]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, key, run) in zip(axes[0], panels):
        for label, row in run[key].items():
            ax.plot([int(b) for b in row], list(row.values()), marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="CPU ms per request",
               title=f"{name} {key.removeprefix('cpu_ms_per_request').lstrip('_') or 'trained'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="prepared dataset (seekrec data prepare)")
    parser.add_argument("--configs", nargs="+", default=["configs/ml-100k-sasrec.toml"])
    parser.add_argument("--epochs", type=int, default=10, help="train.max_epochs for every config")
    parser.add_argument("--candidates", type=int, default=200, help="as seekrec serve --candidates")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size (median kept)")
    parser.add_argument("--dims", type=int, nargs="*", default=[256], help="untrained widths for the CPU curve too")
    parser.add_argument("--rates", type=float, nargs="*", default=[200, 300, 400, 500, 600],
                        help="load-test rates for the first config (none: skip the load test)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per rate and server")
    parser.add_argument("--budget-ms", type=float, default=20.0, help="p99 latency budget")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as seekrec serve --threads 1 (its default)
    set_search_threads(1)
    start = time.time()
    results: dict[str, Any] = {"command": "python " + " ".join(sys.argv), "epochs": args.epochs,
                               "candidates": args.candidates, "dims": args.dims, "models": {},
                               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                           "torch": torch.__version__,
                                           "quantized_engine": torch.backends.quantized.engine}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, config in enumerate(args.configs):
            name = Path(config).stem
            run = work / name
            record = train(config, args.data, run, args.epochs)
            registry = ModelRegistry(work / f"registry-{name}")
            registry.publish_run(run)
            model = {"train": {k: record.get(k) for k in ("epochs", "best_epoch", "train_seconds", "metrics")},
                     "accuracy": accuracy(registry, args.data, args.candidates)}
            print(name, json.dumps(model["accuracy"], indent=1), flush=True)
            model["cpu_ms_per_request"] = cpu_per_request(registry, args.data, args.batch_sizes, args.rounds, list(ARMS))
            model["cpu_ratio_fp32_over_arm"] = ratios(model["cpu_ms_per_request"])
            print(name, json.dumps(model["cpu_ratio_fp32_over_arm"]), flush=True)
            for dim in args.dims:
                wide = publish_untrained(work, registry, dim)
                cpu = cpu_per_request(wide, args.data, args.batch_sizes, args.rounds, ["fp32", "int8 encoder"])
                model[f"cpu_ms_per_request_dim{dim}"] = cpu
                model[f"cpu_ratio_fp32_over_arm_dim{dim}"] = ratios(cpu)
                print(name, dim, json.dumps(model[f"cpu_ratio_fp32_over_arm_dim{dim}"]), flush=True)
            model["bytes_per_item"] = memory_per_item(registry)
            if i == 0 and args.rates:
                model["load"] = load_test(registry, args.data, work, args.rates, args.seconds, args.budget_ms)
            results["models"][name] = model
    results["wall_seconds"] = round(time.time() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
