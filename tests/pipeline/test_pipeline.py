from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split
from seekrec.features.batch import FeatureBatch
from seekrec.pipeline.config import StageConfig
from seekrec.pipeline.evaluate import EvalUsers, offline_item_features
from seekrec.pipeline.pipeline import Pipeline
from seekrec.pipeline.run import TrainedPipeline
from seekrec.pipeline.stages import first_occurrence, rerank, retrieve
from seekrec.retrieval.index import ItemIndex


@pytest.fixture(scope="module")
def users(trained: TrainedPipeline, world: tuple[InteractionData, Split]) -> EvalUsers:
    data, split = world
    return EvalUsers.build(trained.pipeline, data, split, "test")


def with_stages(pipeline: Pipeline, **changes: object) -> Pipeline:
    return pipeline.with_stages(dataclasses.replace(pipeline.stages, **changes))


@pytest.mark.parametrize("retriever", ["two_tower", "sasrec"])
def test_both_retrievers_give_full_unseen_lists(trained: TrainedPipeline, users: EvalUsers, retriever: str) -> None:
    pipeline = with_stages(trained.pipeline, retriever=retriever)
    seen = users.held.seen()
    recs = pipeline.recommend(users.user, seen)
    b, n = len(users.held), pipeline.n_items
    assert recs.ids.shape == (b, 5) and recs.candidates.shape == (b, 12)
    assert ((recs.ids >= 1) & (recs.ids <= n)).all(), "every slot filled: the catalog has enough unseen items"
    probabilities = recs.scores
    assert ((probabilities > 0) & (probabilities < 1)).all() and (probabilities[:, :-1] >= probabilities[:, 1:]).all()
    for row in range(b):
        ids, _ = recs.row(row)
        assert not set(ids.tolist()) & set(seen[row].tolist()), "seen items are never returned"
        assert len(set(ids.tolist())) == len(ids), "no duplicates"
        assert set(ids.tolist()) <= set(recs.candidates[row].tolist()), "the list comes from the candidates"


def test_retrievers_differ_and_fresh_item_rows_are_used(trained: TrainedPipeline, users: EvalUsers) -> None:
    two_tower = with_stages(trained.pipeline, retriever="two_tower").recommend(users.user, users.held.seen())
    sasrec = with_stages(trained.pipeline, retriever="sasrec").recommend(users.user, users.held.seen())
    assert not torch.equal(two_tower.candidates, sasrec.candidates)
    fetch = offline_item_features(users.rows, users.held.as_of, trained.pipeline.spec.n_items)
    fresh = trained.pipeline.recommend(users.user, users.held.seen(), item_features=fetch)
    torch.testing.assert_close(fresh.candidates, two_tower.candidates, msg="item features do not change retrieval")


def test_heavy_seen_lists_are_still_filled(trained: TrainedPipeline, users: EvalUsers) -> None:
    pipeline = trained.pipeline
    rng = np.random.default_rng(0)
    seen = [rng.choice(np.arange(1, pipeline.n_items + 1), size=30, replace=False) for _ in range(len(users.held))]
    recs = pipeline.recommend(users.user, seen, k=5)
    for row, items in enumerate(seen):
        ids, _ = recs.row(row)
        assert len(ids) == 5 and not set(ids.tolist()) & set(items.tolist())
    everything = [np.arange(1, pipeline.n_items + 1)] * len(users.held)
    assert (pipeline.recommend(users.user, everything).ids == 0).all(), "nothing unseen: empty lists, not seen items"
    unfiltered = with_stages(pipeline, filter_seen=False).recommend(users.user, everything)
    assert (unfiltered.ids > 0).all()


def test_recommend_checks_its_inputs(trained: TrainedPipeline, users: EvalUsers) -> None:
    with pytest.raises(ValueError, match="one id list per user"):
        trained.pipeline.recommend(users.user, [])
    with pytest.raises(ValueError, match="no sequence model"):
        Pipeline(trained.pipeline.spec, StageConfig(retriever="sasrec", n_candidates=12, k=5),
                 trained.pipeline.two_tower_model, trained.pipeline.retriever.view, trained.pipeline.din,
                 trained.pipeline.calibrator, trained.pipeline.catalog)


def test_duplicates_are_dropped_keeping_the_best_copy() -> None:
    ids = torch.tensor([[3, 5, 3, 7, 5, 9], [4, 4, 4, 4, 2, 0]])
    assert first_occurrence(ids).tolist() == [[True, True, False, True, False, True],
                                             [True, False, False, False, True, True]]
    scores = torch.tensor([[0.9, 0.1, 0.95, 0.5, 0.8, 0.2], [0.3, 0.9, 0.1, 0.2, 0.5, -torch.inf]])
    out_ids, out_scores = rerank(ids, scores, 4, StageConfig(k=4, n_candidates=6))
    assert out_ids.tolist() == [[3, 5, 7, 9], [4, 2, 0, 0]]
    assert out_scores[0].tolist() == pytest.approx([0.95, 0.8, 0.5, 0.2]), "each id keeps its best score"
    assert torch.isinf(out_scores[1, 2:]).all()
    # an index that holds an id twice (two vectors for one item) never yields it twice
    index = ItemIndex(torch.eye(4), ids=np.array([1, 1, 2, 3]))
    found, _ = retrieve(index, torch.tensor([[1.0, 0.9, 0.1, 0.0]]), torch.zeros(1, 4, dtype=torch.bool), 3)
    assert found.tolist() == [[1, 2, 0]]


def genre_rows(genre_of: list[int], n_genres: int) -> torch.Tensor:
    hot = torch.zeros(len(genre_of) + 1, n_genres + 1)
    hot[torch.arange(1, len(genre_of) + 1), torch.tensor(genre_of)] = 1.0
    return hot


def test_genre_cap_and_mmr_diversify() -> None:
    genres = genre_rows([1, 1, 1, 2, 2, 3], 3)  # items 1-3: genre 1, items 4-5: genre 2, item 6: genre 3
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.1]])
    plain, _ = rerank(ids, scores, 4, StageConfig(k=4, n_candidates=6))
    assert plain.tolist() == [[1, 2, 3, 4]]
    capped, capped_scores = rerank(ids, scores, 4, StageConfig(k=4, n_candidates=6, diversity="max_per_genre",
                                                                max_per_genre=1), genres=genres)
    assert capped.tolist() == [[1, 4, 6, 0]], "one per genre; the cap leaves the fourth slot empty"
    assert capped_scores[0, :3].tolist() == pytest.approx([0.9, 0.6, 0.1])
    mmr, _ = rerank(ids, scores, 3, StageConfig(k=3, n_candidates=6, diversity="mmr", mmr_lambda=0.5), genres=genres)
    assert mmr.tolist() == [[1, 4, 6]], "an even trade-off reaches the weak third genre"
    mmr, _ = rerank(ids, scores, 3, StageConfig(k=3, n_candidates=6, diversity="mmr", mmr_lambda=0.8), genres=genres)
    assert mmr.tolist() == [[1, 4, 2]], "mostly relevance: a second genre, then the strong genre-1 item"
    relevance_only, _ = rerank(ids, scores, 3, StageConfig(k=3, n_candidates=6, diversity="mmr", mmr_lambda=1.0),
                               genres=genres)
    assert relevance_only.tolist() == plain[:, :3].tolist()


def test_diversity_cap_is_honoured_end_to_end(trained: TrainedPipeline, users: EvalUsers) -> None:
    pipeline = with_stages(trained.pipeline, diversity="max_per_genre", max_per_genre=2)
    recs = pipeline.recommend(users.user, users.held.seen())
    genres = pipeline.catalog.categorical["genres"]  # [N + 1, M]
    for row in range(len(recs)):
        ids, _ = recs.row(row)
        assert len(ids) >= 2
        counts = np.bincount(genres[torch.from_numpy(ids)].flatten().numpy())
        assert counts[1:].max() <= 2, f"user row {row}: more than 2 items of one genre in {ids}"
    plain = trained.pipeline.recommend(users.user, users.held.seen())
    assert any(np.bincount(genres[torch.from_numpy(plain.row(r)[0])].flatten().numpy())[1:].max() > 2
               for r in range(len(plain))), "without the cap, topic fans get lists of one genre"


def test_unknown_genre_column_is_refused(trained: TrainedPipeline) -> None:
    with pytest.raises(ValueError, match="genre_column"):
        with_stages(trained.pipeline, diversity="mmr", genre_column="mood")


def test_update_item_features_replaces_the_catalog(trained: TrainedPipeline, users: EvalUsers) -> None:
    pipeline = with_stages(trained.pipeline)
    before = pipeline.recommend(users.user, users.held.seen())
    catalog = pipeline.catalog
    pipeline.update_item_features(FeatureBatch(dict(catalog.categorical), catalog.dense, catalog.text))
    after = pipeline.recommend(users.user, users.held.seen())
    assert torch.equal(before.ids, after.ids)
    with pytest.raises(ValueError, match="rows"):
        pipeline.update_item_features(catalog.index(torch.arange(3)))


def test_retrieval_weight_blends_the_two_models(trained: TrainedPipeline) -> None:
    candidates = torch.tensor([[1, 2, 3]])
    retrieval, ranker = torch.tensor([[9.0, 5.0, 1.0]]), torch.tensor([[-3.0, -1.0, -2.0]])
    exclude = torch.zeros(1, trained.pipeline.n_items + 1, dtype=torch.bool)
    alone = with_stages(trained.pipeline, k=3, n_candidates=3).finish(candidates, retrieval, ranker, exclude)
    assert alone.ids.tolist() == [[2, 3, 1]]
    blended = with_stages(trained.pipeline, k=3, n_candidates=3, retrieval_weight=1.0).finish(candidates, retrieval,
                                                                                              ranker, exclude)
    assert blended.ids.tolist() == [[1, 2, 3]], "log-odds + retrieval logit: 6 > 4 > -1"
    torch.testing.assert_close(blended.scores, torch.sigmoid(ranker), msg="scores stay the ranker's probabilities")


def test_the_retriever_is_picked_when_the_stages_are_set(trained: TrainedPipeline) -> None:
    two_tower = with_stages(trained.pipeline, retriever="two_tower")
    sasrec = with_stages(trained.pipeline, retriever="sasrec")
    assert two_tower.active_retriever is two_tower.retriever and sasrec.active_retriever is sasrec.sequence
    assert two_tower.active_retriever.retrieves_added_items and not sasrec.active_retriever.retrieves_added_items


def test_the_sequence_retriever_refuses_models_with_event_time_inputs() -> None:
    from seekrec.models.factory import build_model
    from seekrec.pipeline.stages import SequenceRetriever

    model = build_model("sasrec", {"dim": 8, "n_layers": 1, "n_heads": 2, "max_len": 4, "time_features": True}, 5)
    with pytest.raises(ValueError, match="event-time/action inputs.*keep item ids only"):
        SequenceRetriever(model, 4)
    assert SequenceRetriever(build_model("sasrec", {"dim": 8, "n_layers": 1, "n_heads": 2, "max_len": 4}, 5), 4)
