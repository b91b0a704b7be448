"""Training curves as PNG: loss and learning rate per step, validation metrics per epoch."""

from __future__ import annotations

from pathlib import Path

from seekrec.io import read_jsonl

# the metrics log of a training run directory (seekrec.training.run_dir); read here without importing
# training, which imports evaluation for validation
METRICS_FILE = "metrics.jsonl"


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Read ``run_dir/metrics.jsonl`` and write ``curves.png`` (or ``out``); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    records = read_jsonl(run / METRICS_FILE)
    if not records:
        raise FileNotFoundError(f"{run / METRICS_FILE} is missing or empty: is {run} a training run directory?")
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train], lw=0.8, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step")
    # ranking metrics for next-item and retrieval runs, AUC for a ranker (seekrec pipeline's din/)
    keys = [k for k in ("ndcg@10", "hr@10", "mrr", "recall@100", "auc", "gauc") if valid and k in valid[-1]]
    for key in keys:
        axes[2].plot([r["epoch"] for r in valid], [r[key] for r in valid], marker=".", label=key)
    axes[2].set(title="validation", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(run.name)
    fig.tight_layout()
    path = Path(out) if out is not None else run / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
