import json
import os
import subprocess
import sys

import pytest

from seekrec.training.metrics_log import MetricsLog

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
