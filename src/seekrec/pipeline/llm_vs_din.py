"""The pointwise LLM ranker against DIN on the same pairs: DIN's own held-out groups.

Each model's report measures AUC on its own negatives: DIN's (``seekrec pipeline train``) pairs each
held-out target with ``din.eval_negatives`` seeded draws from the two-tower's top candidates, the LLM's
(``seekrec llm finetune``) with SASRec's top R. The figures do not compare. Here a pipeline run's
test (or validation) groups are rebuilt exactly as its report built them (its config, feature spec,
models and seed), the LLM scores every pair of them from the user's visible history (every event
before the target, the events DIN's features are built from), and both models get ``ranker_metrics``
over the same (user, item) pairs. For the pointwise (click yes / no) task ``sigmoid(LLM score)`` is a
click probability, so logloss and ECE compare too; DIN's are given raw and as calibrated on validation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.data.splits import load_split
from seekrec.io import sha256_file
from seekrec.llm.prompts import History
from seekrec.llm.rerank import LLM_FILE, LLMReranker, LLMRunInfo  # transformers loads with a run, not here
from seekrec.pipeline.artifacts import BUNDLE_DIR, PIPELINE_FILE, load_bundle
from seekrec.pipeline.config import PipelineConfig
from seekrec.pipeline.features import ITEM_ID_COLUMN, HeldOut, held_out
from seekrec.pipeline.llm_stage import eval_histories
from seekrec.pipeline.stage_config import StageConfig
from seekrec.pipeline.train_din import (
    REPORT_SEEDS,
    HeldOutGroups,
    catalog_sampler,
    group_logits,
    ranker_metrics,
    report_groups,
)
from seekrec.training.run_dir import RunDir, RunDirError

log = logging.getLogger(__name__)


def compare_on_din_groups(pipeline_run: str | Path, llm_run: str | Path, data_dir: str | Path, split: str = "test",
                          *, device: str = "cpu") -> dict[str, Any]:
    """AUC / gAUC / logloss / ECE of DIN and of a fine-tuned LLM ranker on DIN's ``split`` groups.

    ``pipeline_run``: a ``seekrec pipeline train`` run directory; ``llm_run``: a ``seekrec llm finetune``
    run (the pointwise task: its score is a click logit) on the same dataset; ``data_dir``: that
    dataset. DIN and the two-tower run on the CPU, as when the report was made; the LLM on ``device``.
    Returns ``{"split", "groups": B, "pairs": P, "negatives": how they were drawn, "din", "din_calibrated",
    "llm": metrics, "llm_task"}`` (hits and empty draws, weighted 0, are not pairs). ValueError for a
    run or a dataset that does not fit.
    """
    if split not in REPORT_SEEDS:
        raise ValueError(f"split must be one of {sorted(REPORT_SEEDS)}, got {split!r}")
    root, llm_root = Path(pipeline_run), Path(llm_run)
    config, trained_on = _pipeline_config(root)
    if sha256_file(Path(data_dir) / "manifest.json") != trained_on:
        raise ValueError(f"{data_dir} is not the dataset {root} was trained on (its manifest checksum differs); "
                         "pass the data directory the pipeline was trained on")
    if not (llm_root / LLM_FILE).is_file():
        raise ValueError(f"{llm_root}: not a `seekrec llm finetune` run (no {LLM_FILE})")
    info = LLMRunInfo.read(llm_root)
    pipeline = load_bundle(root / BUNDLE_DIR, stages=StageConfig())  # the stages play no part in the groups
    spec = pipeline.spec
    if info.n_items != spec.n_items:
        raise ValueError(f"{llm_root}: the LLM run has {info.n_items} items but the pipeline's dataset "
                         f"{spec.n_items}; fine-tune the LLM on the dataset the pipeline was trained on")
    if info.data_manifest_sha256 is not None and info.data_manifest_sha256 != trained_on:
        raise ValueError(f"{llm_root}: the LLM run was fine-tuned on another dataset than {root} (manifest "
                         "checksums differ); use runs trained on the same prepared data")
    if pipeline.new_raw_ids:
        raise ValueError(f"{root / BUNDLE_DIR}: has {len(pipeline.new_raw_ids)} items added after training, so its "
                         "retrieval negatives are no longer the report's; use the bundle as trained")
    if info.task != "pointwise":
        log.warning("%s was fine-tuned on the %r task: sigmoid(score) is no click probability, so its logloss "
                    "and ECE mean little (AUC and gAUC still compare)", llm_root, info.task)

    data, data_split = load_split(data_dir, config.data.split)
    din_config = config.din
    retrieval = (pipeline.retriever, pipeline.catalog) if din_config.sampler == "retrieval" else None
    with torch.inference_mode():
        groups = report_groups(din_config, spec, data, data_split, split,
                               sampler=catalog_sampler(din_config, spec, data_split), retrieval=retrieval)
        din_logits = group_logits(pipeline.din, groups)  # [B, C]
        din, calibrated = ranker_metrics(groups, din_logits), ranker_metrics(groups, din_logits, pipeline.calibrator)
    reported = _reported(root, split)
    if reported is not None and any(not np.isclose(reported.get(k, np.nan), v, rtol=1e-6) for k, v in din.items()):
        log.warning("DIN's %s metrics on the rebuilt groups %s differ from %s's report %s (another torch "
                    "version or thread count?)", split, din, root, reported)
    held = held_out(data, data_split, split)
    histories = eval_histories(data, held)
    _check_histories(histories, held, groups)

    reranker = LLMReranker.load(llm_root, device=device)
    log.info("scoring %d %s groups of %d with %s", len(held), split, groups.groups.label.shape[1], llm_root)
    llm_logits = _llm_logits(reranker.scores, histories, groups)

    negatives = {"source": din_config.sampler, "per_target": din_config.eval_negatives,
                 "seed": din_config.train.seed + REPORT_SEEDS[split]}
    if retrieval is not None:
        negatives["from_top"] = din_config.retrieval_candidates  # uniform over the two-tower's top R unseen items
    return {"split": split, "groups": len(held), "pairs": int((groups.groups.weight > 0).sum()),
            "negatives": negatives, "din": din, "din_calibrated": calibrated,
            "llm": ranker_metrics(groups, llm_logits), "llm_task": info.task}


def _pipeline_config(root: Path) -> tuple[PipelineConfig, str]:
    """The run's pipeline config and the checksum of the dataset manifest it was trained on."""
    run = RunDir(root)
    if not (run.config_file.is_file() and (root / BUNDLE_DIR / PIPELINE_FILE).is_file()):
        raise ValueError(f"{root}: not a `seekrec pipeline train` run (it needs {run.config_file.name} and "
                         f"{BUNDLE_DIR}/{PIPELINE_FILE})")
    try:
        raw = run.read_config()
    except RunDirError as exc:
        raise ValueError(f"{root}: not a `seekrec pipeline train` run ({exc})") from exc
    if "din" not in raw or "data_manifest_sha256" not in raw:
        raise ValueError(f"{run.config_file}: not a pipeline config (no 'din' or 'data_manifest_sha256'); "
                         "was it written by `seekrec pipeline train`?")
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}  # the rest: what the run adds (data_dir, ...)
    return PipelineConfig.from_dict({k: v for k, v in raw.items() if k in fields}), str(raw["data_manifest_sha256"])


def _reported(root: Path, split: str) -> dict[str, float] | None:
    """DIN's raw ``split`` metrics in the run's results.json, if it has them."""
    run = RunDir(root)
    if not run.finished:
        return None
    return run.read_results().get("din", {}).get("report", {}).get(split, {}).get("raw")


def _check_histories(histories: Sequence[History], held: HeldOut, groups: HeldOutGroups) -> None:
    """The LLM reads what DIN reads: each group's visible history (the events before the target, whose
    time is ``now``) ends with the item sequence of DIN's user row."""
    sequence = groups.groups.user.sequence  # [B, L] left-padded with 0, oldest first
    for b, (user, history) in enumerate(zip(held.users, histories, strict=True)):
        if groups.users[b] != user or not np.array_equal(history.items, held.history.row(int(user))) \
                or history.now != int(held.as_of[b]) - 1:
            raise ValueError(f"user {int(user)}: the LLM's history is not the visible history before the target; "
                             "the split's held-out histories must be prefixes of each user's time-ordered events")
        if sequence is not None:
            din_items = sequence[b][sequence[b] > 0].numpy()
            if not np.array_equal(history.items[len(history.items) - len(din_items):], din_items):
                raise ValueError(f"user {int(user)}: DIN's history sequence is not the end of the LLM's history")


def _llm_logits(score: Callable[[History, np.ndarray], np.ndarray], histories: Sequence[History],
                groups: HeldOutGroups) -> torch.Tensor:
    """``[B, C]`` LLM scores of each group's pairs in the groups' layout, one ``score(history, items)``
    call per group; pairs weighted 0 (hits, empty draws) are not scored and hold 0."""
    weight = groups.groups.weight  # [B, C]
    ids = groups.groups.item.categorical[ITEM_ID_COLUMN][:, 0].view(weight.shape).numpy()  # [B, C] dataset ids
    out = np.zeros(weight.shape, dtype=np.float32)
    for b, history in enumerate(histories):
        scored = (weight[b] > 0).numpy()
        out[b, scored] = score(history, ids[b, scored])
    return torch.from_numpy(out)
