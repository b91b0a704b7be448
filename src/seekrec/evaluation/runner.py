"""``seekrec evaluate``: load a prepared dataset, fit a baseline, score it, return the record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from seekrec.data.splits import load_split
from seekrec.evaluation.baselines import BASELINES
from seekrec.evaluation.report import results_record
from seekrec.evaluation.tuning import fit_and_evaluate


def evaluate_baseline(
    data_dir: str | Path,
    model: str,
    which: str = "test",
    *,
    split: str = "leave_one_out",
    params: dict[str, Any] | None = None,
    mask_history: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate a baseline by name; its grid is tuned on validation unless ``params`` are given."""
    if model not in BASELINES:
        raise ValueError(f"unknown baseline {model!r}; choose one of {', '.join(BASELINES)}")
    start = time.perf_counter()
    data, data_split = load_split(data_dir, split)
    factory = BASELINES[model]
    tuned = fit_and_evaluate(
        factory, data_split, which, data.n_items,
        grid=factory.grid, params=params, mask_history=mask_history, progress=progress,
    )
    return results_record(
        data.source, model, which, tuned.result.metrics, tuned.result.n_users, data.n_items,
        time.perf_counter() - start,
        params=tuned.params, split_kind=split, mask_history=mask_history, validation=tuned.validation,
    )
