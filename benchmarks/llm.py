"""LLM rankers on MovieLens-100K: SASRec alone against SASRec's top 50 re-ranked by LLM rankers, LoRA
against full fine-tuning, the pointwise (click yes/no) task, the distilled student, pretraining cost and
re-ranking latency. Same leave-one-out full-ranking protocol as docs/results.md; every setting (the
checkpoint, the weight w of the retriever's logit, the distillation alpha) is chosen on validation and
test is scored once per run.

    python benchmarks/llm.py --data data/ml-100k --sasrec-runs runs/sasrec-s0 runs/sasrec-s1 runs/sasrec-s2 \\
        --work runs/llm-bench --out benchmarks/results/llm_ml100k.json

Each step is a `seekrec llm ...` / `seekrec train` command in its own process (so peak memory is the
run's own) writing a run directory under --work; a step whose results.json exists is not rerun, so an
interrupted benchmark continues where it stopped. Without --sasrec-runs, SASRec runs are trained first
(configs/ml-100k-sasrec.toml, one per seed). Writes the JSON record and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.io import atomic_write_json

log = logging.getLogger("benchmarks.llm")
SEEKREC = [sys.executable, "-m", "seekrec.cli"]
RERANK_CONFIG = Path("configs/ml-100k-llm-rerank.toml")
LIKELIHOOD_CONFIG = Path("configs/ml-100k-llm-likelihood.toml")
PRETRAIN_CONFIG = Path("configs/ml-100k-llm-pretrain.toml")
DISTILL_CONFIG = Path("configs/ml-100k-sasrec-distill.toml")
SASREC_CONFIG = Path("configs/ml-100k-sasrec.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"), help="prepared ml-100k (default: %(default)s)")
    parser.add_argument("--sasrec-runs", type=Path, nargs="*", default=[],
                        help="`seekrec train` runs of configs/ml-100k-sasrec.toml, one per seed (default: train them)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the main LoRA re-ranker (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("runs/llm-bench"), help="run directories (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/llm_ml100k.json"),
                        help="results JSON (default: %(default)s)")
    parser.add_argument("--figures", type=Path, default=Path("docs"), help="where the PNG curves go (default: %(default)s)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["full", "minilm", "pointwise", "distill", "latency", "likelihood"],
                        help="leave these parts out")
    parser.add_argument("--lora-lrs", type=float, nargs="*", default=[],
                        help="extra seed-0 LoRA runs at these learning rates, compared with the config's on validation")
    parser.add_argument("--likelihood-lrs", type=float, nargs="*", default=[],
                        help="extra seed-0 likelihood runs at these learning rates, compared on validation")
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.0, 0.5, 2.0],
                        help="distillation alphas, chosen on validation; 0 = the same fine-tuning without the teacher")
    parser.add_argument("--latency-requests", type=int, default=200, help="test requests timed per K (default: %(default)s)")
    parser.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the fine-tuning configs for every fine-tuning run")
    parser.add_argument("--likelihood", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of configs/ml-100k-llm-likelihood.toml after --finetune's, for its runs only")
    parser.add_argument("--distill", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of configs/ml-100k-sasrec-distill.toml for every distillation run")
    parser.add_argument("--pipeline-run", type=Path, default=None,
                        help="a `seekrec pipeline train` run on the same data: the pointwise run is scored on its "
                             "DIN's test groups, beside DIN")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = relative_paths(run(args), args.work)
    atomic_write_json(args.out, record)
    print(tables(record))
    print(f"wrote {args.out}")


def relative_paths(record: dict[str, Any], work: Path) -> dict[str, Any]:
    """The record with this machine's absolute paths (runs record resolved paths) written as the command's
    relative ones, so the committed results name no machine directory."""
    text = json.dumps(record)
    for absolute, relative in ((work.resolve(), work), (Path.cwd().resolve(), Path("."))):
        text = text.replace(str(absolute), str(relative))
    return json.loads(text)


# -- steps ------------------------------------------------------------------------------------------
def step(out: Path, command: list[str]) -> dict[str, Any]:
    """Run ``command`` (a seekrec CLI call writing the run ``out``) unless ``out`` already has results."""
    results = out / "results.json"
    if not results.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        log.info("running: %s", " ".join(command))
        started = time.perf_counter()
        with open(out.parent / f"{out.name}.log", "a", encoding="utf-8") as fh:
            subprocess.run(command, check=True, stdout=fh, stderr=subprocess.STDOUT)
        log.info("%s done in %.0f s", out.name, time.perf_counter() - started)
    return json.loads(results.read_text(encoding="utf-8"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    data, work = str(args.data), args.work
    sasrec = list(args.sasrec_runs) or [work / f"sasrec-s{s}" for s in range(args.seeds)]
    if len(sasrec) < args.seeds:
        raise SystemExit(f"--sasrec-runs: {len(sasrec)} runs for {args.seeds} seeds")
    if args.pipeline_run is not None and not (args.pipeline_run / "bundle" / "pipeline.json").is_file():
        raise SystemExit(f"--pipeline-run {args.pipeline_run}: not a `seekrec pipeline train` run (no bundle/)")
    for seed, path in enumerate(sasrec[: args.seeds]):
        step(path, [*SEEKREC, "train", "--config", str(SASREC_CONFIG), "--data", data, "--out", str(path),
                    f"train.seed={seed}"])
    pretrain = step(work / "pretrain", [*SEEKREC, "llm", "pretrain", "--config", str(PRETRAIN_CONFIG), "--data", data,
                                        "--out", str(work / "pretrain")])
    base = str(work / "pretrain" / "model")

    def finetune(name: str, seed: int, flags: list[str], *overrides: str, config: Path = RERANK_CONFIG,
                 ) -> dict[str, Any]:
        out = work / name  # flags before the KEY=VALUE overrides: argparse takes one run of positionals
        extra = args.likelihood if config == LIKELIHOOD_CONFIG else []
        return step(out, [*SEEKREC, "llm", "finetune", "--config", str(config), "--data", data,
                          "--retriever-run", str(sasrec[seed]), "--out", str(out), *flags, f"train.seed={seed}",
                          *args.finetune, *extra, *overrides])

    def lr_sweep(key: str, prefix: str, lrs: list[float], config: Path) -> None:
        """Extra seed-0 runs at these learning rates, compared with the config's on validation."""
        for lr in lrs:
            name = f"{prefix}-lr{lr:g}-s0"
            record.setdefault(key, {})[f"{lr:g}"] = finetune(name, 0, ["--model", base], f"train.lr={lr}",
                                                             config=config)
            record.setdefault(f"{key}_vs_sasrec", {})[f"{lr:g}"] = paired(work, [name])

    lora = {seed: finetune(f"lora-s{seed}", seed, ["--model", base]) for seed in range(args.seeds)}
    record: dict[str, Any] = {
        "benchmark": "llm", "dataset": "ml-100k", "command": " ".join(["python", "benchmarks/llm.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "pretrain": pretrain, "lora": {str(s): r for s, r in lora.items()},
        "sasrec": {str(s): json.loads((sasrec[s] / "results.json").read_text()) for s in range(args.seeds)},
    }
    record["rerank_vs_sasrec"] = paired(work, [f"lora-s{s}" for s in range(args.seeds)])
    lr_sweep("lora_lr", "lora", args.lora_lrs, RERANK_CONFIG)
    if "likelihood" not in args.skip:  # the LM's log p(item line | history), LoRA fine-tuned listwise
        likelihood = {s: finetune(f"like-s{s}", s, ["--model", base], config=LIKELIHOOD_CONFIG)
                      for s in range(args.seeds)}
        record["likelihood"] = {str(s): r for s, r in likelihood.items()}
        record["likelihood_vs_sasrec"] = paired(work, [f"like-s{s}" for s in range(args.seeds)])
        lr_sweep("likelihood_lr", "like", args.likelihood_lrs, LIKELIHOOD_CONFIG)
    if "full" not in args.skip:
        record["full"] = finetune("full-s0", 0, ["--model", base, "--full"])
        record["full_vs_sasrec"] = paired(work, ["full-s0"])
        if "likelihood" not in args.skip:
            record["likelihood_full"] = finetune("like-full-s0", 0, ["--model", base, "--full"],
                                                 config=LIKELIHOOD_CONFIG)
            record["likelihood_full_vs_sasrec"] = paired(work, ["like-full-s0"])
    if "minilm" not in args.skip:
        record["minilm"] = finetune("minilm-s0", 0, ["--model", "minilm"], "model.kind=\"cross_encoder\"")
        record["minilm_vs_sasrec"] = paired(work, ["minilm-s0"])
    if "pointwise" not in args.skip:
        record["pointwise"] = finetune("pointwise-s0", 0, ["--model", base], "task=\"pointwise\"",
                                      "train.select_metric=\"auc\"")
        if args.pipeline_run is not None:
            from seekrec.pipeline.llm_vs_din import compare_on_din_groups

            record["pointwise_vs_din"] = compare_on_din_groups(args.pipeline_run, work / "pointwise-s0", data)
            if "likelihood" in record:  # a ranking score: its AUC / gAUC compare, its logloss does not
                record["likelihood_vs_din"] = compare_on_din_groups(args.pipeline_run, work / "like-s0", data)
    teacher = best_on_validation(record)
    if "distill" not in args.skip:
        record["distill"] = distill(work, data, sasrec[0], teacher, args.alphas, args.distill)
    if "latency" not in args.skip:
        record["latency"] = latency(work, data, args.latency_requests)
    figures(work, args.figures)
    return record


def paired(work: Path, runs: list[str]) -> dict[str, Any]:
    """Per run: test NDCG@10 of the re-ranked list minus SASRec's own, over the same users (mean, standard
    error); and the mean over runs (seeds) with the standard error of that mean."""
    out: dict[str, Any] = {}
    for name in runs:
        ranks = np.load(work / name / "ranks.npz")
        diff = ranks["test_reranked_ndcg"] - ranks["test_retriever_ndcg"]
        base = float(ranks["test_retriever_ndcg"].mean())
        out[name] = {"sasrec_ndcg@10": base, "reranked_ndcg@10": float(ranks["test_reranked_ndcg"].mean()),
                     "diff": float(diff.mean()), "se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                     "relative": float(diff.mean() / base), "weight": float(ranks["weight"])}
    relative = np.array([v["relative"] for v in out.values()])
    diffs = np.array([v["diff"] for v in out.values()])
    out["mean"] = {"diff": float(diffs.mean()), "relative": float(relative.mean()),
                   "se_over_seeds": float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else None,
                   "n_seeds": len(diffs)}
    return out


def best_on_validation(record: dict[str, Any]) -> str:
    """The seed-0 LoRA re-ranker (answer or likelihood score) with the better validation NDCG@10."""
    runs = {"lora-s0": record["lora"]["0"]}
    if "likelihood" in record:
        runs["like-s0"] = record["likelihood"]["0"]
    return max(runs, key=lambda name: runs[name]["valid"]["reranked"]["ndcg@10"])


def distill(work: Path, data: str, sasrec: Path, teacher: str, alphas: list[float], overrides: list[str],
            ) -> dict[str, Any]:
    """Fine-tune SASRec (seed 0) from its best weights with the seed-0 re-ranker ``teacher`` (a run name under
    ``work``), for each alpha (0: the same extra training without the teacher); alpha chosen on validation
    NDCG@10."""
    targets = work / f"teacher-{teacher}.safetensors"
    runs = {}
    for alpha in alphas:
        name = f"distill-{teacher}-a{alpha:g}"
        runs[alpha] = step(work / name, [*SEEKREC, "llm", "distill", "--config", str(DISTILL_CONFIG), "--data", data,
                                         "--teacher", str(work / teacher), "--out", str(work / name),
                                         f"init_run={json.dumps(str(sasrec))}", f"distill.alpha={alpha}",
                                         f"targets.path={json.dumps(str(targets))}", *overrides])
    chosen = max(alphas, key=lambda a: runs[a]["valid"]["ndcg@10"])
    return {"teacher": teacher, "runs": {f"{a:g}": r for a, r in runs.items()}, "chosen_alpha": chosen,
            "valid_ndcg@10": {f"{a:g}": runs[a]["valid"]["ndcg@10"] for a in alphas},
            "test_ndcg@10": {f"{a:g}": runs[a]["metrics"]["ndcg@10"] for a in alphas}}


def latency(work: Path, data: str, n_requests: int) -> dict[str, Any]:
    """p50 / p99 milliseconds to score K candidates of one request (this process, its torch threads): the
    seed-0 LoRA re-ranker with the shared prefix and, for comparison, each candidate's whole prompt alone;
    and the MiniLM cross-encoder (LoRA-wrapped, untrained: its cost does not depend on its weights) on the
    same requests and prompts."""
    import torch

    from seekrec.llm.examples import Retriever, eval_requests, load_events
    from seekrec.llm.models import LoraSettings, apply_lora, load_llm
    from seekrec.llm.prompts import PromptBuilder
    from seekrec.llm.rerank import LLMReranker, read_item_texts
    from seekrec.llm.scoring import build_ranker

    _, events, split = load_events(data)
    reranker = LLMReranker.load(work / "lora-s0")
    retriever = Retriever.load(reranker.info.retriever_run, reranker.n_items)
    requests = eval_requests(events, split.test, retriever, reranker.n_candidates)
    pick = np.random.default_rng(0).choice(len(requests), min(n_requests, len(requests)), replace=False)
    histories = requests.histories(events)
    minilm, tokenizer = load_llm("minilm", "cross_encoder")
    minilm = apply_lora(minilm, LoraSettings(), "cross_encoder")
    cross = build_ranker(minilm, tokenizer, PromptBuilder(tokenizer, read_item_texts(work / "lora-s0"),
                                                          reranker.prompt), "cross_encoder").eval()
    rankers = {"deepseek_v3_lm": (reranker.ranker, {"shared": n_requests, "separately": 30})}
    if (work / "like-s0" / "llm.json").is_file():  # log p(item line | history): every line token's vocabulary softmax
        rankers["deepseek_v3_lm_likelihood"] = (LLMReranker.load(work / "like-s0").ranker,
                                                {"shared": n_requests, "separately": 30})
    rankers["minilm_cross_encoder"] = (cross, {"shared": 30})
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "n_candidates_available": reranker.n_candidates}
    for name, (ranker, modes) in rankers.items():
        timings: dict[str, Any] = {"prefix_tokens_mean": float(np.mean(
            [len(ranker.builder.prefix_ids(histories[i])) for i in pick]))}
        for mode, count in modes.items():
            score = ranker.score if mode == "shared" else ranker.score_separately
            for k in (20, 50):
                ms = []
                with torch.inference_mode():
                    score(histories[pick[0]], requests.candidates[pick[0], :k].tolist())  # warm-up
                    for i in pick[:count]:
                        started = time.perf_counter()
                        score(histories[i], requests.candidates[i, :k].tolist())
                        ms.append(1000 * (time.perf_counter() - started))
                timings[f"{mode}_k{k}"] = {"p50_ms": float(np.percentile(ms, 50)),
                                           "p99_ms": float(np.percentile(ms, 99)),
                                           "mean_ms": float(np.mean(ms)), "requests": len(ms)}
        out[name] = timings
    return out


def figures(work: Path, target: Path) -> None:
    """The pretraining and the seed-0 LoRA fine-tuning curves (answer and likelihood; written by each run)
    copied to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name, png in (("pretrain", "llm_pretrain_curves.png"), ("lora-s0", "llm_finetune_curves.png"),
                      ("like-s0", "llm_likelihood_curves.png")):
        source = work / name / "curves.png"
        if source.is_file():
            shutil.copyfile(source, target / png)


# -- report -----------------------------------------------------------------------------------------
def _m(record: dict[str, Any], split: str, which: str, key: str) -> float:
    return record[split][which][key]


def tables(record: dict[str, Any]) -> str:
    lines = ["| model (test) | NDCG@10 | HR@10 | MRR |", "|---|---|---|---|"]
    seeded = [("lora", "retriever", "SASRec alone"),
              ("lora", "reranked", "SASRec top-50 -> LoRA DeepSeek-V3 LM, answer"),
              ("likelihood", "reranked", "SASRec top-50 -> LoRA DeepSeek-V3 LM, likelihood")]
    for part, which, label in seeded:
        if part not in record:
            continue
        seeds = sorted(record[part])
        vals = {k: [_m(record[part][s], "test", which, k) for s in seeds] for k in ("ndcg@10", "hr@10", "mrr")}
        lines.append(f"| {label} ({len(seeds)} seeds) | " + " | ".join(
            f"{np.mean(v):.4f} ± {np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0:.4f}" for v in vals.values())
            + " |")
    for part, label in (("full", "SASRec top-50 -> fully fine-tuned DeepSeek-V3 LM, answer"),
                        ("likelihood_full", "SASRec top-50 -> fully fine-tuned DeepSeek-V3 LM, likelihood"),
                        ("minilm", "SASRec top-50 -> LoRA MiniLM cross-encoder")):
        if part in record:
            lines.append(f"| {label} (seed 0) | " + " | ".join(
                f"{_m(record[part], 'test', 'reranked', k):.4f}" for k in ("ndcg@10", "hr@10", "mrr")) + " |")
    for part, score in (("lora_lr", "answer"), ("likelihood_lr", "likelihood")):
        for lr, run in record.get(part, {}).items():
            lines.append(f"| SASRec top-50 -> LoRA DeepSeek-V3 LM, {score}, lr {lr} (seed 0) | " + " | ".join(
                f"{_m(run, 'test', 'reranked', k):.4f}" for k in ("ndcg@10", "hr@10", "mrr")) + " |")
    if "distill" in record:
        d = record["distill"]
        best = d["runs"][f"{d['chosen_alpha']:g}"]["metrics"]
        lines.append(f"| distilled SASRec (teacher {d['teacher']}, alpha={d['chosen_alpha']:g}, seed 0) | "
                     f"{best['ndcg@10']:.4f} | "
                     f"{best['hr@10']:.4f} | {best['mrr']:.4f} |")
    if "pointwise_vs_din" in record:
        versus = record["pointwise_vs_din"]
        lines += ["", f"| on DIN's test groups ({versus['groups']} targets, {versus['pairs']} pairs) | AUC | gAUC | "
                  "logloss |", "|---|---|---|---|"]
        for key, label in (("din", "DIN"), ("llm", "pointwise LoRA DeepSeek-V3 LM (seed 0)")):
            lines.append(f"| {label} | " + " | ".join(f"{versus[key][k]:.4f}" for k in ("auc", "gauc", "logloss"))
                         + " |")
        if "likelihood_vs_din" in record:
            llm = record["likelihood_vs_din"]["llm"]
            lines.append(f"| likelihood DeepSeek-V3 LM (seed 0; a ranking score) | {llm['auc']:.4f} | {llm['gauc']:.4f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
