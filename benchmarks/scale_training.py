"""Data-parallel scaling: training throughput on 1 and 2 processes under DDP and FSDP, and what each process
holds in memory under each strategy.

Data: the repository's simulator at MovieLens-1M size (6,040 users, 3,706 items, ~165 events a user; generated
once into --data, then reused). Every configuration runs under ``torchrun --standalone`` in fresh processes:

* throughput: SASRec as configs/ml-1m-sasrec.toml (dim 50, 2 layers, max_len 200, 128 uniform negatives,
  global batch 128), sequences/s over the timed steps after a few warm-up steps;
* memory: a DeepSeek-rec of about 100M parameters (dim 512, 8 layers, 16 routed experts): per process its
  parameter count, the bytes of parameters, gradients and AdamW state it holds, and its peak RSS. It runs
  first in each process, so the peak RSS is its own. The peak includes building the whole model on every
  rank before ``fully_shard`` splits it; the model-state bytes are what a rank keeps while training.

One process trains the bare model whatever the strategy (nothing to replicate or shard), so it runs once,
as "single". Each process gets ``cpus / processes`` threads, so 1 and 2 processes use the same cores.
Writes benchmarks/results/scale_training.json; ``--quick`` checks the script end to end in tiny sizes.

    python benchmarks/scale_training.py
    python benchmarks/scale_training.py --quick --out /tmp/scale_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "scale_training.json"
ML1M_SIM = {"n_users": 6040, "n_items": 3706, "mean_events_per_user": 165.0, "seed": 0}
THROUGHPUT_MODEL = {"name": "sasrec", "params": {"dim": 50, "n_layers": 2, "n_heads": 1, "dropout": 0.2,
                                             "similarity": "cosine", "temperature": 0.05}}
MEMORY_MODEL = {"name": "deepseek", "params": {
    "dim": 512, "n_layers": 8, "n_heads": 8, "q_lora_rank": 256, "kv_lora_rank": 128, "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32, "v_head_dim": 64, "ffn_dim": 1536, "moe_ffn_dim": 512, "n_routed_experts": 16,
    "n_shared_experts": 1, "top_k": 2, "n_dense_layers": 1, "dropout": 0.0}}
QUICK_SIM = {"n_users": 200, "n_items": 120, "mean_events_per_user": 30.0, "seed": 0}
QUICK_THROUGHPUT = {"name": "sasrec", "params": {"dim": 16, "n_layers": 1, "n_heads": 1, "dropout": 0.0}}
QUICK_MEMORY = {"name": "deepseek", "params": {
    "dim": 32, "n_layers": 2, "n_heads": 2, "q_lora_rank": 16, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8, "v_head_dim": 8, "ffn_dim": 64, "moe_ffn_dim": 32, "n_routed_experts": 4,
    "n_shared_experts": 1, "top_k": 2, "dropout": 0.0}}


# -- one process of one configuration (under torchrun) ------------------------------------------------------


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds for ``tensors``: a DTensor (FSDP) counts only its local shard."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def train_steps(spec: dict[str, Any], model_spec: dict[str, Any], batch_size: int, max_len: int, loss: dict[str, Any],
                steps: int, warmup: int) -> dict[str, Any]:
    """Build ``model_spec`` on this rank, wrap it with ``spec["strategy"]`` and time ``steps`` optimiser steps."""
    import torch

    from seekrec.data.sequences import SequenceDataset
    from seekrec.data.splits import load_split
    from seekrec.models.factory import build_loss, build_model
    from seekrec.models.losses import LossConfig
    from seekrec.models.task import NextItemTask
    from seekrec.training.config import TrainConfig
    from seekrec.training.distributed import DistContext, barrier
    from seekrec.training.parallel import build_parallel
    from seekrec.training.step import TrainStep, build_optimizer, warmup_cosine
    from seekrec.training.trainer import SequenceEpochs

    ctx: DistContext = spec["ctx"]
    torch.manual_seed(0)
    data, split = load_split(spec["data"])
    model = build_model(model_spec["name"], {**model_spec["params"], "max_len": max_len}, data.n_items)
    rss_built = rss_bytes()
    config = TrainConfig(batch_size=batch_size, warmup_steps=10, strategy=spec["strategy"], device=spec["device"],
                         precision=spec["precision"])
    parallel = build_parallel(config, ctx)
    model = model.to(ctx.device)
    wrapped = parallel.wrap(model)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1000, 10, 0.0))
    task = NextItemTask(wrapped, build_loss(LossConfig(**loss), data.n_items), seed=0)
    step = TrainStep(wrapped, task, optimizer, scheduler, config, ctx)
    batches = SequenceEpochs(SequenceDataset(split.train, max_len), config, ctx)

    def groups() -> Any:
        epoch = 0
        while True:
            yield from batches.epoch(epoch, 0)
            epoch += 1

    feed = groups()
    for _ in range(warmup):
        step(next(feed))
    barrier(ctx)
    start = time.perf_counter()
    sequences = 0
    for _ in range(steps):
        sequences += step(next(feed)).sequences
    barrier(ctx)
    seconds = time.perf_counter() - start
    params = [p for p in model.parameters()]
    optim_state = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return {
        "model": model_spec["name"], "n_parameters": sum(p.numel() for p in params),
        "parameter_bytes": local_bytes(params),
        "gradient_bytes": local_bytes(p for p in params if p.requires_grad),  # held from backward to the step
        "optimizer_state_bytes": local_bytes(optim_state),
        "sequences_per_second": sequences * ctx.world_size / seconds, "seconds": seconds, "steps": steps,
        "global_batch": batch_size, "max_len": max_len, "rss_after_build_bytes": rss_built,
        "rss_after_steps_bytes": rss_bytes(),
    }


def worker(spec_file: str) -> None:
    import gc

    import torch

    from seekrec.training.distributed import init_distributed, shutdown

    spec = json.loads(Path(spec_file).read_text())
    ctx = init_distributed(spec["device"])
    spec["ctx"] = ctx
    try:
        memory = train_steps(spec, spec["memory_model"], spec["memory_batch"], spec["memory_max_len"],
                             {"name": "full_softmax"}, steps=spec["memory_steps"], warmup=1)
        memory["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        if ctx.device.type == "cuda":
            memory["peak_cuda_allocated_bytes"] = torch.cuda.max_memory_allocated(ctx.device)
        gc.collect()
        speed = train_steps(spec, spec["throughput_model"], spec["batch_size"], spec["max_len"], spec["loss"],
                            steps=spec["steps"], warmup=spec["warmup"])
        row = {"rank": ctx.rank, "world_size": ctx.world_size, "threads": torch.get_num_threads(),
               "memory": memory, "throughput": speed}
        Path(spec["out_dir"], f"rank-{ctx.rank}.json").write_text(json.dumps(row))
    finally:
        shutdown(ctx)


# -- the launcher ------------------------------------------------------------------------------------------


def simulate(data: Path, sim: dict[str, Any]) -> Path:
    """The simulated dataset at ``data``, generated unless a previous run left it there."""
    from seekrec.data.simulator import Simulator, SimulatorConfig

    if not (data / "manifest.json").is_file():
        print(f"simulating {sim} into {data}", flush=True)
        Simulator(SimulatorConfig(**sim)).generate().write(data)
    return data


def run_config(procs: int, strategy: str, base: dict[str, Any], threads: int) -> dict[str, Any]:
    """One configuration under torchrun; its per-rank results."""
    with tempfile.TemporaryDirectory(prefix="scale-training-") as tmp:
        spec_file = Path(tmp, "spec.json")
        spec_file.write_text(json.dumps({**base, "strategy": "ddp" if strategy == "single" else strategy,
                                         "out_dir": tmp}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               __file__, "--worker", str(spec_file)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return {"processes": procs, "strategy": strategy, "error": proc.stderr.strip()[-2000:]}
        ranks = [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(procs)]
    return {"processes": procs, "strategy": strategy, "threads_per_process": threads,
            "sequences_per_second": ranks[0]["throughput"]["sequences_per_second"], "ranks": ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="simulated dataset directory, generated there if missing (default: a cache in the "
                             f"temp dir, {Path(tempfile.gettempdir()) / 'seekrec-scale-sim-<size>'})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default: %(default)s)")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"],
                        help="strategies for more than one process (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (default: %(default)s)")
    parser.add_argument("--max-len", type=int, default=200, help="throughput model's max_len (default: %(default)s)")
    parser.add_argument("--memory-steps", type=int, default=3,
                        help="steps of the memory model (default: %(default)s)")
    parser.add_argument("--memory-batch", type=int, default=16,
                        help="memory model's global batch (default: %(default)s)")
    parser.add_argument("--memory-max-len", type=int, default=50,
                        help="memory model's max_len (default: %(default)s)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, or auto for one GPU per process (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and models, 2 steps: checks the script end to end in seconds")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    sim, throughput_model, memory_model = ML1M_SIM, THROUGHPUT_MODEL, MEMORY_MODEL
    if args.quick:
        sim, throughput_model, memory_model = QUICK_SIM, QUICK_THROUGHPUT, QUICK_MEMORY
        args.steps, args.warmup, args.memory_steps, args.batch_size, args.max_len = 2, 1, 1, 16, 20
        args.memory_batch, args.memory_max_len = 8, 16
    size = f"{sim['n_users']}x{sim['n_items']}x{sim['mean_events_per_user']:g}-seed{sim['seed']}"
    data = simulate(args.data or Path(tempfile.gettempdir()) / f"seekrec-scale-sim-{size}", sim)
    base = {"data": str(data), "device": args.device, "precision": args.precision, "steps": args.steps,
            "warmup": args.warmup, "batch_size": args.batch_size, "max_len": args.max_len,
            "loss": {"name": "sampled_softmax", "n_negatives": 128, "sampler": "uniform"},
            "throughput_model": throughput_model, "memory_model": memory_model, "memory_steps": args.memory_steps,
            "memory_batch": args.memory_batch, "memory_max_len": args.memory_max_len}
    configs = [(n, s) for n in args.procs for s in (["single"] if n == 1 else args.strategies)]
    cpus = os.cpu_count() or 1
    rows = []
    for procs, strategy in configs:
        rows.append(run_config(procs, strategy, base, threads=max(1, cpus // procs)))
        print(summary_line(rows[-1]), flush=True)
    result = {"command": "python " + " ".join(sys.argv), "quick": args.quick, "simulated_data": sim,
              "machine": {"platform": platform.platform(), "cpus": cpus}, "settings": base, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['processes']} x {row['strategy']}: failed: {row['error'].splitlines()[-1]}"
    mem, mib = row["ranks"][0]["memory"], 2**20
    return (f"{row['processes']} x {row['strategy']}: {row['sequences_per_second']:.0f} seq/s; memory model "
            f"{mem['n_parameters'] / 1e6:.2f}M params, rank 0 holds: params {mem['parameter_bytes'] / mib:.1f} MiB, "
            f"AdamW state {mem['optimizer_state_bytes'] / mib:.1f} MiB; peak RSS {mem['peak_rss_bytes'] / mib:.0f} MiB")

if __name__ == "__main__":
    main()
