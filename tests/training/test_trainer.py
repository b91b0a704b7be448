import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from seekrec.data.sequences import SequenceDataset
from seekrec.data.splits import UserSequences
from seekrec.models.factory import build_loss, build_model
from seekrec.models.losses import LossConfig
from seekrec.models.task import NextItemTask
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.metrics_log import MetricsLog
from seekrec.training.run_dir import RunDir
from seekrec.training.trainer import SequenceEpochs, Trainer
from tests.models.helpers import TINY as TINY_MODELS

TINY = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=16",
        "train.warmup_steps=2", "train.eval_batch_size=64"]


def _train(data, out, *overrides):
    return train_experiment(ExperimentConfig.load(None, [*TINY, *overrides]), data, out)


def _train_losses(run_dir):
    return [r["loss"] for r in MetricsLog(Path(run_dir) / "metrics.jsonl").read() if r["kind"] == "train"]


def test_run_directory_and_best_checkpoint(sim_data_dir, tmp_path):
    record = _train(sim_data_dir, tmp_path, "train.max_epochs=3", "train.lr=0.01")
    for name in ("config.json", "metrics.jsonl", "results.json", "best/model.safetensors", "best/meta.json"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"] == record["metrics"] and saved["model"] == "sasrec" and saved["split"] == "test"
    assert json.loads((tmp_path / "config.json").read_text())["data_manifest_sha256"]
    meta = json.loads((tmp_path / "best" / "meta.json").read_text())
    assert meta["config"]["model"]["name"] == "sasrec" and len(meta["data_manifest_sha256"]) == 64
    assert {"epoch", "step", "valid"} <= set(meta)
    kinds = [r["kind"] for r in MetricsLog(tmp_path / "metrics.jsonl").read()]
    assert kinds.count("valid") == 3 and kinds[-1] == "test"
    assert record["sequences_per_second"] > 0 and 1 <= record["best_epoch"] <= 3


def test_early_stopping_stops_when_validation_stalls(sim_data_dir, tmp_path):
    record = _train(sim_data_dir, tmp_path, "train.max_epochs=50", "train.lr=1e-12", "train.patience=2",
                    "model.dropout=0.0")
    assert record["epochs"] == 3  # first eval sets the best, two more without improvement stop it
    assert record["best_epoch"] == 1


@pytest.mark.parametrize("name", ["sasrec", "deepseek"])
def test_test_is_scored_on_the_validated_model_routing_bias_included(name, tmp_path):
    """The best validation comes first and training goes on (weights and DeepSeek's routing bias keep
    moving); the test must still see exactly the model that was validated."""
    n_items, n_users, max_len = 30, 24, TINY_MODELS[name]["max_len"]
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, n_users + 1), 12)
    seqs = UserSequences.from_interactions(users, rng.integers(1, n_items + 1, len(users)), np.arange(len(users)),
                                           n_users)
    extra = {"bias_update_speed": 0.05} if name == "deepseek" else {}
    torch.manual_seed(0)
    model = build_model(name, {**TINY_MODELS[name], **extra}, n_items)
    probe = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    seen = []  # (scores of the probe, routing biases) at each validation, then at the test

    def score() -> dict[str, float]:
        biases = [gate.e_score_correction_bias.clone() for gate in getattr(model, "routers", {}).values()]
        seen.append((model.score_all(probe).clone(), biases))
        return {"ndcg@10": 1.0 / len(seen)}  # the first validation is the best

    config = TrainConfig(lr=1e-2, max_epochs=3, batch_size=8, warmup_steps=1, patience=10, device="cpu")
    ctx = DistContext(0, 1, 0, torch.device("cpu"))
    loss = build_loss(LossConfig(name="full_softmax"), n_items)
    batches = SequenceEpochs(SequenceDataset(seqs, max_len), config, ctx)
    trainer = Trainer(model, lambda m: NextItemTask(m, loss), batches, score, config, run_dir=RunDir(tmp_path), ctx=ctx,
                      resume=False, test=score)
    assert trainer.fit().best_epoch == 1
    (best, best_biases), (last, last_biases), (tested, tested_biases) = seen[0], seen[-2], seen[-1]
    assert not torch.allclose(last, best), "training did not move the model after the best validation"
    assert torch.equal(tested, best)
    if name == "deepseek":
        assert not all(torch.equal(a, b) for a, b in zip(last_biases, best_biases, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(tested_biases, best_biases, strict=True))


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch(sim_data_dir, tmp_path):
    common = ["train.max_epochs=2", "model.dropout=0.0", "loss.name=full_softmax", "train.lr=0.01"]
    _train(sim_data_dir, tmp_path / "full", *common)
    _train(sim_data_dir, tmp_path / "accum", *common, "train.grad_accum=4")
    assert _train_losses(tmp_path / "full") == pytest.approx(_train_losses(tmp_path / "accum"), rel=1e-4)


def test_bf16_autocast_on_cpu_trains(sim_data_dir, tmp_path):
    record = _train(sim_data_dir, tmp_path, "train.max_epochs=1", "train.precision=bf16")
    assert all(torch.isfinite(torch.tensor(_train_losses(tmp_path))))
    assert record["precision"] == "bf16"


def test_fp16_without_gpu_is_refused(sim_data_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: fp16 is allowed")
    with pytest.raises(ValueError, match="fp16"):
        _train(sim_data_dir, tmp_path, "train.max_epochs=1", "train.precision=fp16")


def _cli(data, out, *overrides):
    return [sys.executable, "-m", "seekrec.cli", "train", "--data", str(data), "--out", str(out), *TINY,
            "train.max_epochs=6", "train.checkpoint_every=1", "loss.name=bce", "model.dropout=0.3", *overrides]


@pytest.mark.slow
def test_kill_9_then_resume_is_exact(sim_data_dir, tmp_path):
    """SIGKILL mid-run, restart: the resumed run logs exactly the losses of an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(sim_data_dir, tmp_path / "clean"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli(sim_data_dir, tmp_path / "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() >= "step-000000012":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    subprocess.run(_cli(sim_data_dir, tmp_path / "killed"), check=True, env=env, capture_output=True)
    assert _train_losses(tmp_path / "killed") == _train_losses(tmp_path / "clean")
    clean = json.loads((tmp_path / "clean" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert clean["metrics"] == resumed["metrics"]


@pytest.mark.slow
def test_deepseek_logs_expert_load(sim_data_dir, tmp_path):
    _train(sim_data_dir, tmp_path, "model.name=deepseek", "train.max_epochs=1", "model.n_routed_experts=4",
           "model.top_k=2", "model.n_heads=2")
    train = [r for r in MetricsLog(tmp_path / "metrics.jsonl").read() if r["kind"] == "train"]
    loads = train[-1]["expert_load"]
    assert loads and all(len(v) == 4 and sum(v) == pytest.approx(1.0, abs=1e-5) for v in loads.values())
    assert "moe_max_load_ratio" in train[-1]
