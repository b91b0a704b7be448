import pytest

from seekrec.training.metrics_log import MetricsLog
from seekrec.training.run_dir import RunDir


def test_plot_run_writes_a_png(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.append({"kind": "train", "step": step, "epoch": 0, "loss": 5.0 / step, "lr": 1e-3})
    log.append({"kind": "valid", "step": 5, "epoch": 1, "ndcg@10": 0.1, "hr@10": 0.2, "mrr": 0.05})
    path = RunDir(tmp_path).plot()
    assert path == tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_of_a_non_run_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="training run directory"):
        RunDir(tmp_path).plot()


def test_truncated_last_line_is_ignored(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"kind": "train", "step": 1, "loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "st')  # a write cut short by kill -9
    assert len(log.read()) == 1
    log.truncate_after(0)
    assert log.read() == []
