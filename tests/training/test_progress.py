import logging

from seekrec.training import progress
from seekrec.training.progress import ProgressLog


def test_a_line_every_interval_with_step_rate_and_eta(caplog):
    now = [0.0]
    bar = ProgressLog("epoch 1/3", 100, every_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="seekrec.training.progress"):
        for _ in range(40):
            now[0] += 0.5  # 2 steps/s
            bar.update(loss="1.5000")
    assert caplog.messages == ["epoch 1/3: step 20/100 (20%), 2.00 steps/s, loss 1.5000, ETA 0:00:40",
                               "epoch 1/3: step 40/100 (40%), 2.00 steps/s, loss 1.5000, ETA 0:00:30"]


def test_training_logs_progress_when_stderr_is_not_a_terminal(sim_data_dir, tmp_path, caplog, monkeypatch):
    from seekrec.training.experiment import ExperimentConfig, train_experiment

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line per step
    config = ExperimentConfig.load(None, ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12",
                                          "train.batch_size=32", "train.max_epochs=1", "train.eval_batch_size=64"])
    with caplog.at_level(logging.INFO, logger="seekrec.training.progress"):
        train_experiment(config, sim_data_dir, tmp_path / "run")
    lines = [m for m in caplog.messages if m.startswith("epoch 1/1: step")]
    assert lines and "steps/s" in lines[-1] and "ETA" in lines[-1]
    steps = int(lines[-1].split("step ")[1].split("/")[0])
    total = int(lines[-1].split("/")[2].split(" ")[0])
    assert steps == total
