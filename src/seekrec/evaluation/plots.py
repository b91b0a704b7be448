"""Training curves as PNG: loss and learning rate per step, validation metrics per epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(records: Sequence[dict[str, Any]], title: str, out: str | Path) -> Path:
    """Write the curves of a metrics log's ``records`` (``kind`` train / valid) to the PNG ``out``.

    Where a run keeps its log and its curves is the run directory's business (``RunDir.plot``).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train], lw=0.8, color="tab:orange")
    axes[1].set(title="learning rate", xlabel="step")
    # ranking metrics for next-item and retrieval runs, AUC for a ranker (seekrec pipeline's din/), held-out
    # loss for a language model (seekrec llm pretrain)
    keys = [k for k in ("ndcg@10", "hr@10", "mrr", "recall@100", "auc", "gauc", "valid_loss")
            if valid and k in valid[-1]]
    for key in keys:
        axes[2].plot([r["epoch"] for r in valid], [r[key] for r in valid], marker=".", label=key)
    axes[2].set(title="validation", xlabel="epoch")
    if keys:
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)
