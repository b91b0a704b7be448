import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seekrec.data.sequences import SequenceDataset
from seekrec.data.splits import load_split
from seekrec.training.metrics_log import MetricsLog
from tests.training.fsdp_jobs import CPU, MAX_LEN, sequence_run

ROOT = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("fsdp_jobs.py")
# A rank that never reaches the collective (a hung host: alive, sockets open) and one that waits for it there.
HUNG_PEER = """
import json, sys, time
import torch, torch.distributed as dist
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import init_distributed
config = TrainConfig(device="cpu", dist_timeout_s=float(sys.argv[1]))
ctx = init_distributed(config.device, config.dist_timeout_s)  # as train_experiment calls it
if ctx.rank == 1:
    time.sleep(600)
start = time.monotonic()
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError as exc:  # DistBackendError
    print(json.dumps({"seconds": time.monotonic() - start, "error": str(exc)}))
"""

ARGS = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "model.dropout=0.0", "data.max_len=12",
        "train.batch_size=16", "train.max_epochs=3", "train.lr=0.01", "train.warmup_steps=2", "loss.name=full_softmax"]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(sim_data_dir, tmp_path):
    """2 gloo ranks, each half of every global batch, train the same model as one process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "seekrec.cli", "train", "--data", str(sim_data_dir)]
    subprocess.run([sys.executable, *train, "--out", str(tmp_path / "single"), *ARGS], check=True, env=env,
                   capture_output=True)
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         *train, "--out", str(tmp_path / "ddp"), *ARGS],
        env=env, capture_output=True, text=True,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = [r for r in MetricsLog(tmp_path / "single" / "metrics.jsonl").read() if r["kind"] == "train"]
    double = [r for r in MetricsLog(tmp_path / "ddp" / "metrics.jsonl").read() if r["kind"] == "train"]
    assert len(single) == len(double)
    for a, b in zip(single, double):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)  # the all-reduced global-batch loss
    s = json.loads((tmp_path / "single" / "results.json").read_text())["metrics"]
    d = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert d["world_size"] == 2
    for key in ("ndcg@10", "hr@50", "mrr"):
        assert d["metrics"][key] == pytest.approx(s[key], abs=2e-3)


def _records(run: Path, kind: str) -> list[dict]:
    return [r for r in MetricsLog(run / "metrics.jsonl").read() if r["kind"] == kind]


@pytest.mark.slow
def test_three_ranks_with_uneven_and_empty_shards_match_one_process(sim_data_dir, tmp_path):
    """A global batch not divisible by 3, and epochs that end in a batch of fewer than 3 sequences: 3 gloo ranks
    train as one process does, under DDP (SASRec) and FSDP (DeepSeek-rec, whose MoE routing counts tokens), the
    ranks left without a sequence stepping on a padding row.

    SASRec as in test_fsdp.py: losses rtol 1e-5 (observed 2.7e-7), ranking metrics abs 1e-6 (equal). DeepSeek-rec
    gets rtol 1e-4 and abs 1e-3 (observed 5.7e-6 and 2e-4): its top-k routing and sign() bias update turn 1e-7
    differences in the summation order of uneven shards into discrete changes that grow over the steps (with
    shards of equal size the same run stays within 3e-7)."""
    _, split = load_split(sim_data_dir, "leave_one_out")
    n = len(SequenceDataset(split.train, MAX_LEN))
    batch_size = next(b for b in range(10, n) if b % 3 and 0 < n % b < 3)  # 1 or 2 ranks empty at each epoch end
    strategies = {"sasrec": "ddp", "deepseek": "fsdp"}
    tolerance = {"sasrec": (1e-5, 1e-6), "deepseek": (1e-4, 1e-3)}  # losses rtol, metrics abs
    common = {"batch_size": batch_size, "max_epochs": 2}
    spec = [{"kind": "sequence", "data_dir": str(sim_data_dir), "out": str(tmp_path / f"three-{model}"),
             "model": model, "strategy": strategy, **common} for model, strategy in strategies.items()]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                           str(JOBS), str(tmp_path / "spec.json")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model, strategy in strategies.items():
        sequence_run(str(sim_data_dir), str(tmp_path / f"one-{model}"), CPU, model=model, strategy=strategy, **common)
        three, one = tmp_path / f"three-{model}", tmp_path / f"one-{model}"
        steps = _records(three, "train")
        assert [r["world_size"] for r in steps] == [3] * len(steps) and len(steps) == 2 * -(-n // batch_size)
        rtol, atol = tolerance[model]
        np.testing.assert_allclose([r["loss"] for r in steps], [r["loss"] for r in _records(one, "train")],
                                   rtol=rtol, err_msg=model)
        for kind in ("valid", "test"):
            for a, b in zip(_records(three, kind), _records(one, kind), strict=True):
                for key in ("ndcg@10", "hr@50", "mrr"):
                    assert a[key] == pytest.approx(b[key], abs=atol), (model, kind, key)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_process_group_timeout_ends_a_collective_that_a_hung_peer_never_joins():
    """train.dist_timeout_s reaches the process group: rank 0's all-reduce fails after it, not after gloo's 30 min."""
    timeout_s, port = 2.0, _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-c", HUNG_PEER, str(timeout_s)], env={**env, "RANK": str(r),
                              "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        out, err = ranks[0].communicate(timeout=90)
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert out.strip(), err[-3000:]
    failed = json.loads(out.strip().splitlines()[-1])
    assert "timed out" in failed["error"].lower(), failed["error"]
    assert timeout_s - 0.5 <= failed["seconds"] < timeout_s + 10, failed


def test_train_experiment_passes_the_timeout_to_the_process_group(monkeypatch, tmp_path):
    from seekrec.training import experiment

    class Joined(Exception):
        pass

    def init_distributed(device: str, timeout_s: float | None = None) -> None:
        raise Joined(device, timeout_s)

    monkeypatch.setattr(experiment, "init_distributed", init_distributed)
    config = experiment.ExperimentConfig.load(None, ["train.dist_timeout_s=900", "train.device=cpu"])
    with pytest.raises(Joined) as joined:
        experiment.train_experiment(config, tmp_path, tmp_path / "run")
    assert joined.value.args == ("cpu", 900.0)
