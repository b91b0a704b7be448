"""Results in the one format every command writes, and plain-text tables of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seekrec.evaluation.ranking import METRIC_KEYS
from seekrec.io import atomic_write_json


def results_record(
    dataset: str, model: str, split: str, metrics: dict[str, float], n_users: int, n_items: int, seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """``{"dataset", "model", "split", "metrics", "n_users", "n_items", "seconds", ...extra}``."""
    return {
        "dataset": dataset,
        "model": model,
        "split": split,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
        "n_users": int(n_users),
        "n_items": int(n_items),
        "seconds": round(float(seconds), 3),
        **extra,
    }


def write_results(path: str | Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def format_table(rows: Sequence[dict[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> str:
    """A fixed-width table: one row per results record, one column per metric."""
    header = ["model", "split", *keys, "seconds"]
    body = [
        [str(r["model"]), str(r["split"]), *(f"{r['metrics'][k]:.4f}" for k in keys), f"{r['seconds']:.1f}"]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))) for b in body]
    return "\n".join(lines)
