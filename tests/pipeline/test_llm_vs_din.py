"""The LLM ranker on DIN's own held-out groups: the very pairs of DIN's report, rebuilt from the run directory,
each scored by the LLM from the events DIN's features are built from, both through ``ranker_metrics``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.models.negatives import NegativeSampler
from seekrec.pipeline.features import ITEM_ID_COLUMN, held_out
from seekrec.pipeline.llm_vs_din import compare_on_din_groups
from seekrec.pipeline.run import TrainedPipeline
from seekrec.pipeline.train_din import HeldOutGroups, group_logits, held_out_groups, ranker_metrics
from tests.pipeline.helpers import tiny_config, topic_world
from tests.pipeline.llm_helpers import one_torch_thread, write_llm_run

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def llm_run(world: tuple[InteractionData, Split], sasrec_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llm_run(tmp_path_factory.mktemp("pointwise") / "run", world[0], sasrec_run, task="pointwise")


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """Every ``scores(history, items)`` call of the LLM that ``compare_on_din_groups`` loads, with its answer."""
    from seekrec.llm.rerank import LLMReranker

    calls: list[tuple[Any, np.ndarray, np.ndarray]] = []
    load = LLMReranker.load

    def recording_load(run: Path, **kwargs: Any) -> LLMReranker:
        reranker = load(run, **kwargs)
        scores = reranker.scores

        def recording_scores(history: Any, items: np.ndarray) -> np.ndarray:
            out = scores(history, items)
            calls.append((history, np.asarray(items).copy(), out.copy()))
            return out

        reranker.scores = recording_scores  # type: ignore[method-assign]
        return reranker

    monkeypatch.setattr(LLMReranker, "load", recording_load)
    return calls


def run_dir(trained: TrainedPipeline) -> Path:
    return Path(trained.record["bundle"]).parent


def din_groups(trained: TrainedPipeline, world: tuple[InteractionData, Split], world_dir: Path,
               sasrec_run: Path, which: str) -> HeldOutGroups:
    """The groups of DIN's report built here from the in-memory pipeline, not from the run directory: the
    tiny config's retrieval negatives, seeded train.seed (valid) or train.seed + 1 (test)."""
    data, split = world
    config = tiny_config(str(world_dir), str(sasrec_run)).din
    n = trained.pipeline.spec.n_items
    counts = torch.from_numpy(np.bincount(split.train.items, minlength=n + 1).astype(np.float64))
    pipeline = trained.pipeline
    return held_out_groups(pipeline.spec, data, held_out(data, split, which), config,
                           config.train.seed + (1 if which == "test" else 0),
                           sampler=NegativeSampler("popularity", n, item_counts=counts),
                           retrieval=(pipeline.retriever, pipeline.catalog))


def events_of(data: InteractionData, user: int) -> np.ndarray:
    """Row positions of ``user``'s events in the events table, oldest first (ties in table order)."""
    users, _, timestamps = data.interactions()
    rows = np.flatnonzero(users == user)
    return rows[np.argsort(timestamps[rows], kind="stable")]


def test_the_llm_scores_dins_own_test_pairs_from_the_history_din_sees(
        trained: TrainedPipeline, world: tuple[InteractionData, Split], world_dir: Path, sasrec_run: Path,
        llm_run: Path, recorded: list[tuple[Any, np.ndarray, np.ndarray]]) -> None:
    from seekrec.llm.rerank import LLMReranker

    result = compare_on_din_groups(run_dir(trained), llm_run, world_dir)
    calls = list(recorded)  # before the reference below records its own
    data, split = world
    groups = din_groups(trained, world, world_dir, sasrec_run, "test")
    weight = groups.groups.weight  # [B, C]
    size, width = weight.shape
    assert result["groups"] == size == len(split.test.users) and width == 1 + 5
    assert result["pairs"] == int((weight > 0).sum()) < size * width  # a few draws hit the target
    assert result["negatives"] == {"source": "retrieval", "per_target": 5, "seed": 1, "from_top": 200}

    # DIN: the figures of its report, on the pairs rebuilt from the run directory alone
    report = trained.record["din"]["report"]["test"]
    with torch.inference_mode():
        din_logits = group_logits(trained.pipeline.din, groups)
    assert result["din"] == pytest.approx(ranker_metrics(groups, din_logits), abs=1e-12)
    assert result["din"] == pytest.approx(report["raw"], abs=1e-12)
    assert result["din_calibrated"] == pytest.approx(report["calibrated"], abs=1e-12)

    # the LLM: one call per group, about exactly the group's scored pairs (dataset ids, target first), from
    # every event of the user but the last, as the raw events table has them
    ids = groups.groups.item.categorical[ITEM_ID_COLUMN][:, 0].view(size, width).numpy()  # [B, C]
    users, items, timestamps = data.interactions()
    values = data.events.column("value").to_numpy()
    sequence = groups.groups.user.sequence  # [B, L] what DIN reads of the history, 0 = padding
    assert len(calls) == size and groups.users.min() >= 1
    reference = LLMReranker.load(llm_run)  # loaded on its own: no state shared with the comparison
    expected = np.zeros((size, width), dtype=np.float32)
    for b, (history, asked, answer) in enumerate(calls):
        scored = (weight[b] > 0).numpy()
        assert scored[0] and asked.tolist() == ids[b, scored].tolist()
        assert ((asked >= 1) & (asked <= data.n_items)).all()
        own = events_of(data, int(groups.users[b]))
        assert ids[b, 0] == items[own[-1]]  # the test target: the user's last event
        assert history.items.tolist() == items[own[:-1]].tolist()
        assert history.values.tolist() == values[own[:-1]].tolist()
        assert history.timestamps.tolist() == timestamps[own[:-1]].tolist() and history.now == timestamps[own[-1]]
        din_history = sequence[b][sequence[b] > 0].tolist()
        assert len(din_history) == min(len(own) - 1, sequence.shape[1])
        assert history.items[len(history.items) - len(din_history):].tolist() == din_history
        expected[b, scored] = reference.scores(history, ids[b, scored])
        np.testing.assert_allclose(answer, expected[b, scored], rtol=1e-5, atol=1e-6)
    assert len(set(np.round(expected[weight > 0], 4).tolist())) > width  # the scores differ between pairs
    assert result["llm"] == pytest.approx(ranker_metrics(groups, torch.from_numpy(expected)), rel=1e-5)
    assert result["llm_task"] == "pointwise" and 0.0 <= result["llm"]["auc"] <= 1.0


def test_the_validation_groups_are_those_din_was_selected_on(
        trained: TrainedPipeline, world: tuple[InteractionData, Split], llm_run: Path, world_dir: Path,
        recorded: list[tuple[Any, np.ndarray, np.ndarray]]) -> None:
    result = compare_on_din_groups(run_dir(trained), llm_run, world_dir, "valid")
    assert result["din"] == pytest.approx(trained.record["din"]["report"]["valid"]["raw"], abs=1e-12)
    assert result["negatives"]["seed"] == 0 and result["groups"] == len(world[1].valid.users)
    history = recorded[0][0]  # the validation target's history: every event but the last two
    own = events_of(world[0], int(world[1].valid.users[0]))
    assert history.items.tolist() == world[0].interactions()[1][own[:-2]].tolist()


def test_runs_and_data_that_do_not_fit_are_refused(trained: TrainedPipeline, world_dir: Path, sasrec_run: Path,
                                                     llm_run: Path, tmp_path: Path) -> None:
    from seekrec.llm.rerank import LLMRunInfo

    pipeline = run_dir(trained)
    n = trained.pipeline.spec.n_items
    with pytest.raises(ValueError, match="not a `seekrec pipeline train` run"):
        compare_on_din_groups(sasrec_run, llm_run, world_dir)
    with pytest.raises(ValueError, match="not a `seekrec llm finetune` run"):
        compare_on_din_groups(pipeline, tmp_path, world_dir)
    other_llm = tmp_path / "other-llm"
    other_llm.mkdir()
    dataclasses.replace(LLMRunInfo.read(llm_run), n_items=n + 3).write(other_llm)
    with pytest.raises(ValueError, match=f"has {n + 3} items but the pipeline's dataset {n}"):
        compare_on_din_groups(pipeline, other_llm, world_dir)
    dataclasses.replace(LLMRunInfo.read(llm_run), data_manifest_sha256="0" * 64).write(other_llm)
    with pytest.raises(ValueError, match="fine-tuned on another dataset"):
        compare_on_din_groups(pipeline, other_llm, world_dir)
    other_data = tmp_path / "other-world"
    topic_world(seed=1).write(other_data)
    with pytest.raises(ValueError, match="not the dataset"):
        compare_on_din_groups(pipeline, llm_run, other_data)
    with pytest.raises(ValueError, match="split must be one of"):
        compare_on_din_groups(pipeline, llm_run, world_dir, "train")
