"""Choose hyper-parameters on validation, then fit on train + validation and score the test set."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from seekrec.data.splits import Split
from seekrec.evaluation.ranking import EvalResult, Scorer, evaluate

log = logging.getLogger(__name__)


@dataclass
class TunedResult:
    params: dict[str, Any]
    result: EvalResult
    validation: list[dict[str, Any]]  # one {"params", "metrics"} entry per grid point
    fit_seconds: float


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a ``{name: [values]}`` grid (one empty point for an empty grid)."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def fit_and_evaluate(
    factory: Callable[..., Any],
    split: Split,
    which: str,
    n_items: int,
    *,
    grid: dict[str, list] | None = None,
    params: dict[str, Any] | None = None,
    select_metric: str = "ndcg@10",
    mask_history: bool = True,
    progress: bool = False,
) -> TunedResult:
    """Fit ``factory(**params)`` and evaluate it on ``which``.

    Without explicit ``params`` each point of ``grid`` is fitted on the training set and scored
    on validation; the best by ``select_metric`` is refitted on what ``which`` allows
    (``split.fit_data``) and evaluated there. The test set never influences the choice.
    """
    validation: list[dict[str, Any]] = []
    points = grid_points(grid or {})
    if params is None and len(points) > 1:
        best_score = float("-inf")
        for point in points:
            model = factory(**point).fit(split.fit_data("valid"), n_items)
            res = evaluate(model, split.valid, n_items, mask_history=mask_history, progress=progress)
            validation.append({"params": point, "metrics": res.metrics})
            log.info("validation %s: %s=%.4f", point, select_metric, res.metrics[select_metric])
            if res.metrics[select_metric] > best_score:
                best_score, params = res.metrics[select_metric], point
    params = dict(params if params is not None else points[0])
    start = time.perf_counter()
    model: Scorer = factory(**params).fit(split.fit_data(which), n_items)
    fit_seconds = time.perf_counter() - start
    result = evaluate(model, split.eval_set(which), n_items, mask_history=mask_history, progress=progress)
    return TunedResult(params, result, validation, fit_seconds)

