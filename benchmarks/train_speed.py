"""Training throughput per model and the measured effect of bf16 autocast, torch.compile and
gradient accumulation. Each variant runs in its own process so peak memory (max RSS on CPU, peak
allocated on CUDA) is its own.

    python benchmarks/train_speed.py --data data/ml-100k --out benchmarks/results/train_speed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {  # name -> TrainConfig overrides
    "fp32": {},
    "bf16 autocast": {"precision": "bf16"},
    "torch.compile": {"compile": True},
    "grad_accum=4": {"grad_accum": 4},
    "activation checkpointing": {"activation_checkpointing": True},
}
MODELS = {"sasrec": {"dim": 64, "n_layers": 2}, "deepseek": {"dim": 64, "n_layers": 2}}


def measure(data: str, model_name: str, variant: str, steps: int, max_len: int, batch_size: int, device: str,
            loss: str = "full_softmax") -> dict:
    import torch

    from seekrec.data.sequences import SequenceDataset, SequenceLoader
    from seekrec.data.splits import load_split
    from seekrec.models.losses import LossConfig
    from seekrec.models.factory import build_loss, build_model
    from seekrec.models.task import NextItemTask
    from seekrec.training.config import TrainConfig
    from seekrec.training.distributed import DistContext
    from seekrec.training.step import TrainStep, build_optimizer, warmup_cosine

    torch.manual_seed(0)
    dev = torch.device(device)
    config = TrainConfig(batch_size=batch_size, warmup_steps=10, **VARIANTS[variant])
    data_obj, split = load_split(data)
    model = build_model(model_name, {**MODELS[model_name], "max_len": max_len}, data_obj.n_items).to(dev)
    if config.activation_checkpointing:
        model.set_activation_checkpointing(True)
    forward = torch.compile(model) if config.compile else model
    task = NextItemTask(forward, build_loss(LossConfig(name=loss), data_obj.n_items))
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1000, 10, 0.0))
    step = TrainStep(forward, task, optimizer, scheduler, config, DistContext(0, 1, 0, dev))
    loader = SequenceLoader(SequenceDataset(split.train, max_len, stride=max_len // 2),
                            batch_size // config.grad_accum, seed=0)
    micro = list(loader.iter_epoch(0))
    groups = [micro[i : i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]
    warm = 3
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start_compile = time.perf_counter()
    for g in groups[:warm]:
        step(g)
    warmup_seconds = time.perf_counter() - start_compile
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    seqs = tokens = 0
    for k in range(steps):
        stats = step(groups[(warm + k) % len(groups)])
        seqs, tokens = seqs + stats.sequences, tokens + stats.tokens
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model_name, "variant": variant, "device": device, "loss": loss, "steps": steps,
            "batch_size": batch_size,
            "max_len": max_len, "sequences_per_second": seqs / seconds, "tokens_per_second": tokens / seconds,
            "ms_per_step": 1000 * seconds / steps, "warmup_seconds": warmup_seconds,
            "peak_memory_mb": peak / 2**20, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loss", default="full_softmax", choices=["full_softmax", "sampled_softmax", "bce"])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--single", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(measure(args.data, args.single[0], args.single[1], args.steps, args.max_len,
                                 args.batch_size, args.device, args.loss)))
        return
    rows = []
    for model in args.models:
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--data", args.data, "--steps", str(args.steps), "--max-len",
                   str(args.max_len), "--batch-size", str(args.batch_size), "--device", args.device,
                   "--loss", args.loss, "--single", model, variant]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"model": model, "variant": variant, "error": proc.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    for model in args.models:  # ratios against fp32 of the same model in the same run
        base = next(r for r in rows if r["model"] == model and r["variant"] == "fp32")
        for r in rows:
            if r["model"] == model and "error" not in r:
                r["speedup_vs_fp32"] = r["sequences_per_second"] / base["sequences_per_second"]
    result = {"command": "python " + " ".join(sys.argv), "machine": {"platform": platform.platform(),
              "cpus": os.cpu_count(), "torch_threads": rows[0].get("threads")}, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| model | variant | seq/s | tokens/s | ms/step | peak MB | vs fp32 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | failed: {r['error']} | | | | |")
        else:
            print(f"| {r['model']} | {r['variant']} | {r['sequences_per_second']:.0f} | {r['tokens_per_second']:.0f} "
                  f"| {r['ms_per_step']:.0f} | {r['peak_memory_mb']:.0f} | {r['speedup_vs_fp32']:.2f}x |")


if __name__ == "__main__":
    main()
