"""The predictor against plain references: ``score_all`` + masking for the ANN path, and one-at-a-time
calls for micro-batching (STYLE rule 13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from seekrec.data.vocab import CATALOG_FILE
from seekrec.online.histories import UserHistories
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.retrieval.index import IndexConfig
from seekrec.serving.batching import MicroBatcher
from seekrec.serving.predictor import Query, Recommendation
from seekrec.serving.sequence_predictor import SequencePredictor


@pytest.fixture
def predictor(registry: ModelRegistry) -> SequencePredictor:
    return SequencePredictor.from_registry(registry, candidates=5)  # fewer than k + seen: the predictor must widen


@pytest.fixture
def histories(predictor: SequencePredictor, sim_data_dir: Path) -> UserHistories:
    return UserHistories.from_dataset(sim_data_dir, 200, predictor.catalog)


def _queries(histories: UserHistories) -> list[Query]:
    queries = [Query(str(u), tuple(histories.get(str(u))), k=3 + u % 7, exclude_seen=u % 3 != 0) for u in range(1, 25)]
    return queries + [Query("stranger", (), k=4), Query("stranger-2", (), k=2, exclude_seen=False)]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_equals_score_all_reference(predictor: SequencePredictor, histories: UserHistories, exclude_seen: bool) -> None:
    users = [str(u) for u in range(1, 31)]
    recs = predictor.recommend([Query(u, tuple(histories.get(u)), 10, exclude_seen) for u in users])
    with torch.no_grad():
        scores = predictor.model.score_all(histories.padded(users, predictor.max_len))  # [B, N + 1]
    scores[:, 0] = float("-inf")
    if exclude_seen:
        for row, user in enumerate(users):
            scores[row, histories.get(user)] = float("-inf")
    ref_scores, ref_ids = scores.topk(10, dim=1)
    for row, rec in enumerate(recs):
        assert not rec.fallback and rec.model_version == predictor.version
        assert list(rec.item_ids) == predictor.catalog.items.decode(ref_ids[row])
        torch.testing.assert_close(torch.tensor(rec.scores), ref_scores[row], rtol=1e-4, atol=1e-5)
        if exclude_seen:
            seen = set(predictor.catalog.items.decode(histories.get(users[row])))
            assert not seen & set(rec.item_ids)


def test_unknown_user_gets_popular_items(predictor: SequencePredictor) -> None:
    rec = predictor.recommend([Query("nobody", (), 5)])[0]
    expected = predictor.catalog.popular(5)
    assert rec.fallback and list(rec.item_ids) == predictor.catalog.items.decode(expected)
    assert list(rec.scores) == [float(predictor.catalog.counts[i]) for i in expected]


def test_k_larger_than_catalog_returns_every_unseen_item(predictor: SequencePredictor, histories: UserHistories) -> None:
    history = tuple(histories.get("1"))
    rec = predictor.recommend([Query("1", history, 1000)])[0]
    assert len(rec.item_ids) == predictor.n_items - len(set(history))


def test_hnsw_predictor_serves_the_same_users(registry: ModelRegistry, histories: UserHistories) -> None:
    hnsw = SequencePredictor.from_registry(registry, index_config=IndexConfig(hnsw_threshold=1))
    flat = SequencePredictor.from_registry(registry)
    assert hnsw.index.kind == "hnsw" and flat.index.kind == "flat"
    queries = [Query(str(u), tuple(histories.get(str(u))), 10) for u in range(1, 21)]
    overlap = [len(set(a.item_ids) & set(b.item_ids)) / 10 for a, b in zip(hnsw.recommend(queries), flat.recommend(queries))]
    assert sum(overlap) / len(overlap) > 0.95


@pytest.mark.parametrize("quantize,codec", [("int8", "fp32"), ("none", "sq8"), ("int8", "sq8")])
def test_int8_predictor_serves_nearly_the_same_lists(registry: ModelRegistry, histories: UserHistories,
                                                     predictor: SequencePredictor, quantize: str, codec: str) -> None:
    """Each int8 option keeps most of the fp32 top 10, and a returned score is the exact similarity of the
    (int8-encoded) user with the fp32 item embedding: candidates may change, scores are never approximate."""
    int8 = SequencePredictor.from_registry(registry, candidates=5, quantize=quantize,
                                           index_config=IndexConfig(codec=codec))
    assert (int8.describe()["encoder"], int8.describe()["index"]) == (
        "int8" if quantize == "int8" else "fp32", "flat-sq8" if codec == "sq8" else "flat")
    queries = [Query(str(u), tuple(histories.get(str(u))), 10) for u in range(1, 31)]
    recs = int8.recommend(queries)
    overlap = [len(set(a.item_ids) & set(b.item_ids)) / 10 for a, b in zip(recs, predictor.recommend(queries))]
    assert sum(overlap) / len(overlap) > 0.8, f"top-10 overlap with fp32 {sum(overlap) / len(overlap):.2f}"
    with torch.inference_mode():
        users = int8.model.encode_users(histories.padded([q.user_id for q in queries], int8.max_len))  # [B, D]
    for row, rec in enumerate(recs):
        items = int8.item_embeddings[torch.tensor(int8.catalog.items.encode(list(rec.item_ids)))]  # [K, D]
        exact = int8.model.similarity.pairwise(users[row : row + 1], items)
        torch.testing.assert_close(torch.tensor(rec.scores), exact, rtol=1e-4, atol=1e-5)


def test_unknown_quantize_mode_is_refused(registry: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="quantize must be one of"):
        SequencePredictor.from_registry(registry, quantize="fp16")


def _same(a: Recommendation, b: Recommendation) -> None:
    assert (a.user_id, a.item_ids, a.fallback, a.model_version) == (b.user_id, b.item_ids, b.fallback, b.model_version)
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("run_in_thread", [False, True], ids=["inline", "thread"])
def test_micro_batched_equals_one_at_a_time(predictor: SequencePredictor, histories: UserHistories, run_in_thread: bool) -> None:
    queries = _queries(histories)
    single = [predictor.recommend([q])[0] for q in queries]
    sizes: list[int] = []

    async def concurrent() -> list[Recommendation]:
        batcher = MicroBatcher(predictor.recommend, max_batch=8, max_wait_ms=50, on_batch=sizes.append,
                               run_in_thread=run_in_thread)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(q) for q in queries))
        finally:
            await batcher.stop()

    batched = asyncio.run(concurrent())
    assert max(sizes) == 8 and sum(sizes) == len(queries)  # requests really shared forward passes
    for a, b in zip(batched, single):
        _same(a, b)


@pytest.mark.parametrize("run_in_thread", [False, True], ids=["inline", "thread"])
def test_micro_batcher_hands_errors_to_every_waiter_and_keeps_going(run_in_thread: bool) -> None:
    def run(batch: list[int]) -> list[int]:
        if 13 in batch:
            raise ValueError("unlucky batch")
        return [x * 2 for x in batch]

    async def scenario() -> tuple[list[object], list[int]]:
        batcher: MicroBatcher[int, int] = MicroBatcher(run, max_batch=4, max_wait_ms=20, run_in_thread=run_in_thread)
        batcher.start()
        try:
            first = await asyncio.gather(*(batcher.submit(x) for x in (12, 13)), return_exceptions=True)
            second = await asyncio.gather(*(batcher.submit(x) for x in (1, 2, 3)))
        finally:
            await batcher.stop()
        return first, second

    first, second = asyncio.run(scenario())
    assert all(isinstance(r, ValueError) for r in first)
    assert second == [2, 4, 6]


def test_micro_batcher_requires_start() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda b: b)
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(batcher.submit(1))
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda b: b, max_batch=0)


def test_version_with_non_finite_weights_is_refused(registry: ModelRegistry) -> None:
    loaded = registry.load()
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    bad = registry.publish(loaded.model, model_name=loaded.manifest["model_name"],
                           model_config=loaded.manifest["model_config"],
                           extra_files={CATALOG_FILE: (loaded.directory / CATALOG_FILE).read_bytes()})
    with pytest.raises(RegistryError, match="non-finite"):
        SequencePredictor.from_registry(registry, bad)


@pytest.mark.slow
def test_compiled_encoder_gives_the_same_recommendations(registry: ModelRegistry, predictor: SequencePredictor,
                                                         histories: UserHistories) -> None:
    """``seekrec serve --compile``: torch.compile'd user encoder (dynamic batch) against eager."""
    compiled = SequencePredictor.from_registry(registry, candidates=5, compile_encoder=True)
    queries = _queries(histories)
    for batch in (queries[:1], queries[:7], queries):
        for a, b in zip(compiled.recommend(batch), predictor.recommend(batch)):
            assert a.item_ids == b.item_ids
            torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=1e-4, atol=1e-4)


@pytest.fixture
def context_predictor(context_registry: ModelRegistry) -> SequencePredictor:
    return SequencePredictor.from_registry(context_registry)  # loads (no refusal) and passes its self-check


def test_a_model_with_event_time_inputs_serves_as_of_the_request_time(context_predictor: SequencePredictor,
                                                                       sim_data_dir: Path) -> None:
    predictor = context_predictor
    assert predictor.needs_context
    histories = UserHistories.from_dataset(sim_data_dir, 200, predictor.catalog)
    users = [str(u) for u in range(1, 21)]

    def served(now: int) -> list[Recommendation]:
        predictor.clock = lambda: now + 0.9  # whole seconds: the fraction is dropped
        queries = []
        for user in users:
            items, times, values = zip(*histories.events(user))
            queries.append(Query(user, items, 10, exclude_seen=False, times=times, values=values))
        return predictor.recommend(queries)

    def reference(now: int) -> torch.Tensor:
        inputs, context = histories.padded_with_context(users, now, predictor.max_len)
        with torch.no_grad():
            return predictor.model.score_all(inputs, context)  # [B, N + 1]

    last = max(t for u in users for _, t, _ in histories.events(u))
    soon, later = last + 60, last + 3 * 365 * 86400
    results = {}
    for now in (soon, later):
        recs, scores = served(now), reference(now)
        scores[:, 0] = float("-inf")
        ref_scores, ref_ids = scores.topk(10, dim=1)
        for row, rec in enumerate(recs):
            assert not rec.fallback and list(rec.item_ids) == predictor.catalog.items.decode(ref_ids[row])
            torch.testing.assert_close(torch.tensor(rec.scores), ref_scores[row], rtol=1e-4, atol=1e-5)
        results[now] = recs
    assert any(a.scores != b.scores for a, b in zip(results[soon], results[later]))
    assert any(a.item_ids != b.item_ids for a, b in zip(results[soon], results[later]))
    with pytest.raises(ValueError, match="needs the events' times and values"):
        predictor.recommend([Query("no-times", (1, 2), 5)])


def test_queries_without_times_still_serve_models_without_event_time_inputs(predictor: SequencePredictor) -> None:
    assert not predictor.needs_context
    assert not predictor.recommend([Query("plain", (1, 2), 5)])[0].fallback
    with pytest.raises(ValueError, match="times has 1 entries but history has 2"):
        Query("bad", (1, 2), 5, times=(1,), values=(1.0, 1.0))


def test_arm_translation_keeps_each_kept_events_time_and_value(context_predictor: SequencePredictor) -> None:
    import numpy as np

    from seekrec.serving.arms import ArmModel

    arm = ArmModel(context_predictor, np.array([0, 2, 0, 1]))  # server id -> model id (0: unknown)
    assert arm.needs_context
    events = [(1, 10, 1.0), (2, 20, 2.0), (3, 30, 3.0), (9, 40, 4.0)]  # 2 and 9: unknown to the model
    assert arm.translate_events(events) == ((2, 1), (10, 30), (1.0, 3.0))
    assert arm.translate_events([(2, 20, 2.0)]) == ((), (), ())
    assert arm.translate([e[0] for e in events]) == (2, 1)
