"""Exploration re-ranking: greedy, epsilon-greedy and Thompson sampling over one request's candidates."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.serving.explore import (
    ClickAttribution,
    ExploreMethod,
    Explorer,
    ExploreSettings,
    FeedbackCounts,
    request_rng,
    tie_ranks,
)

K = 10


def _candidates(n: int = 50, offset: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """n candidates best first: ids offset.. and strictly falling scores."""
    return np.arange(offset, offset + n), np.linspace(5.0, -5.0, n)


def _explorer(method: str, **kwargs: object) -> Explorer:
    return Explorer(ExploreSettings(method=method, **kwargs))


def test_greedy_returns_the_input_order() -> None:
    ids, scores = _candidates()
    slate = _explorer("greedy").rerank(ids, scores, K, np.random.default_rng(0))
    assert slate.item_ids.tolist() == ids[:K].tolist()
    assert slate.positions.tolist() == list(range(K))
    assert slate.explored_positions == ()


def test_epsilon_zero_is_greedy() -> None:
    ids, scores = _candidates()
    explorer = _explorer("epsilon_greedy", epsilon=0.0)
    for seed in range(20):
        slate = explorer.rerank(ids, scores, K, np.random.default_rng(seed))
        assert slate.item_ids.tolist() == ids[:K].tolist()
        assert not slate.explored.any()


def test_epsilon_one_explores_every_slot() -> None:
    ids, scores = _candidates()
    slate = _explorer("epsilon_greedy", epsilon=1.0, top_n=30).rerank(ids, scores, K, np.random.default_rng(1))
    assert slate.explored_positions == tuple(range(K))
    assert ((slate.positions >= K) & (slate.positions < 30)).all()  # from ranks K..top_n-1 only


def test_exploration_frequency_matches_epsilon() -> None:
    ids, scores = _candidates()
    eps, requests = 0.15, 1000  # 10k slot draws
    explorer = _explorer("epsilon_greedy", epsilon=eps)
    explored = sum(explorer.rerank(ids, scores, K, request_rng(7, "u", r)).explored.sum() for r in range(requests))
    n = requests * K
    assert abs(explored - eps * n) < 3 * np.sqrt(n * eps * (1 - eps))


def test_explored_slots_keep_the_greedy_items_in_order() -> None:
    ids, scores = _candidates()
    slate = _explorer("epsilon_greedy", epsilon=0.5).rerank(ids, scores, K, np.random.default_rng(3))
    greedy = slate.positions[~slate.explored]
    assert greedy.tolist() == list(range(len(greedy)))  # the unexplored slots hold ranks 0, 1, 2, ... in order
    assert 0 < slate.explored.sum() < K


def test_same_request_seed_same_slate_and_seed_none_is_allowed() -> None:
    ids, scores = _candidates()
    for method in ("epsilon_greedy", "thompson"):
        explorer = _explorer(method, epsilon=0.5, seed=11)
        first = explorer.rerank(ids, scores, K, explorer.request_rng("user-1", 42))
        again = explorer.rerank(ids, scores, K, explorer.request_rng("user-1", 42))
        other = [explorer.rerank(ids, scores, K, explorer.request_rng("user-1", r)).item_ids.tolist()
                 for r in range(43, 53)]
        assert first.item_ids.tolist() == again.item_ids.tolist()
        assert any(o != first.item_ids.tolist() for o in other)
    assert len(_explorer("thompson").request_rng("u", 1).random(3)) == 3  # seed None: OS entropy


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from(list(ExploreMethod)), n=st.integers(0, 80), k=st.integers(1, 30),
       top_n=st.integers(1, 60), epsilon=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1),
       ties=st.booleans())
def test_slates_have_no_duplicates_and_k_items(method: ExploreMethod, n: int, k: int, top_n: int, epsilon: float,
                                               seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n + 1)[:n] + 1
    scores = np.sort(rng.integers(0, 4, n) if ties else rng.normal(size=n))[::-1]
    feedback = FeedbackCounts(8)
    feedback.record_impressions(rng.choice(ids, 3 * n) if n else [])
    explorer = Explorer(ExploreSettings(method=method, epsilon=epsilon, top_n=top_n), feedback)
    slate = explorer.rerank(ids, scores, k, rng)
    assert len(slate.item_ids) == min(k, n)
    assert len(set(slate.item_ids.tolist())) == len(slate.item_ids)
    assert slate.item_ids.tolist() == ids[slate.positions].tolist()
    assert (slate.positions < max(k, top_n)).all()  # only the window of candidates is ever shown
    assert slate.explored.tolist() == (slate.positions >= k).tolist()


def test_thompson_concentrates_on_the_best_item_in_a_toy_bandit() -> None:
    rng = np.random.default_rng(0)
    ctr = rng.uniform(0.01, 0.08, 20)
    best = 13
    ctr[best] = 0.2
    ids, scores = np.arange(1, 21), np.zeros(20)  # an uninformative model: every item ties
    attribution = ClickAttribution(FeedbackCounts(20))
    explorer = Explorer(ExploreSettings(method="thompson", top_n=20, prior_alpha=1.0, prior_beta=20.0),
                        attribution.counts)
    shown = []
    for round_ in range(5000):
        item = int(explorer.rerank(ids, scores, 1, explorer.request_rng("u", round_)).item_ids[0])
        attribution.served("u", [item])
        if rng.random() < ctr[item - 1]:
            assert attribution.event("u", item)
        shown.append(item)
    assert np.mean(np.asarray(shown[-1000:]) == best + 1) > 0.5


def test_thompson_without_evidence_follows_the_model() -> None:
    """With no feedback every posterior is the prior, so the model's rank decides: its top item leads most often."""
    ids, scores = _candidates()
    explorer = _explorer("thompson", rank_weight=2.0)
    first = [int(explorer.rerank(ids, scores, K, np.random.default_rng(s)).positions[0]) for s in range(500)]
    counts = np.bincount(first, minlength=50)
    assert counts.argmax() == 0 and counts[0] > 0.3 * 500
    assert np.mean(np.asarray(first) < K) > 0.8


def test_thompson_promotes_a_clicked_item_from_below_the_slate() -> None:
    ids, scores = _candidates()
    feedback = FeedbackCounts()
    feedback.record_impressions(np.repeat(ids, 200))  # every candidate shown 200 times ...
    for _ in range(100):
        feedback.record_click(int(ids[30]))  # ... and rank 30 clicked half the time, the rest never
    explorer = Explorer(ExploreSettings(method="thompson"), feedback)
    slates = [explorer.rerank(ids, scores, K, np.random.default_rng(seed)) for seed in range(200)]
    assert np.mean([s.positions[0] == 30 for s in slates]) > 0.85  # unclicked items still get lucky draws
    assert all(30 in s.positions.tolist() for s in slates)
    assert all(s.explored[s.positions == 30].all() for s in slates)


def test_tie_ranks() -> None:
    assert tie_ranks(np.array([3.0, 3.0, 2.0, 1.0, 1.0, 1.0])).tolist() == [0, 0, 2, 3, 3, 3]


def test_feedback_counts_grow_and_posterior_clamps() -> None:
    counts = FeedbackCounts(4, max_items=10_000)
    counts.record_impressions([2, 2, 9_000])
    counts.record_click(2)
    counts.record_click(7)  # a click with no impression
    clicks, impressions = counts.counts([2, 7, 9_000, 9_999])
    assert clicks.tolist() == [1, 1, 0, 0] and impressions.tolist() == [2, 0, 1, 0]
    a, b = counts.posterior([2, 7], 1.0, 20.0)
    assert a.tolist() == [2.0, 2.0] and b.tolist() == [21.0, 20.0]
    with pytest.raises(ValueError, match="max_items"):
        counts.record_click(10_001)


def test_feedback_counts_are_thread_safe() -> None:
    counts = FeedbackCounts(1)  # starts tiny, so threads also race on growing the arrays
    threads_n, rounds = 8, 500

    def hammer(t: int) -> None:
        for r in range(rounds):
            counts.record_impressions([1, 2, 100 + t * rounds + r])
            counts.record_click(1)

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    clicks, impressions = counts.counts([1, 2, 100, 100 + threads_n * rounds - 1])
    assert impressions.tolist() == [threads_n * rounds, threads_n * rounds, 1, 1]
    assert clicks[0] == threads_n * rounds


def test_click_attribution_counts_only_clicks_on_the_last_slate() -> None:
    attribution = ClickAttribution(FeedbackCounts(), max_users=2)
    attribution.served("a", [1, 2, 3])
    assert attribution.event("a", 2)
    assert not attribution.event("a", 2)  # a second event on the same slot is no second click
    assert not attribution.event("a", 9)  # found on their own, not shown
    attribution.served("b", [4])
    attribution.served("c", [5])  # "a" is the least recently served: forgotten
    assert not attribution.event("a", 3)
    assert attribution.event("c", 5)
    clicks, impressions = attribution.counts.counts([1, 2, 3, 4, 5])
    assert clicks.tolist() == [0, 1, 0, 0, 1] and impressions.tolist() == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("field, value, message", [
    ("method", "ucb", "method"), ("epsilon", 1.5, "epsilon"), ("epsilon", float("nan"), "epsilon"),
    ("top_n", 0, "top_n"), ("top_n", True, "top_n"), ("seed", -1, "seed"), ("prior_alpha", 0.0, "prior_alpha"),
    ("prior_beta", -1.0, "prior_beta"), ("rank_weight", -0.5, "rank_weight"),
])
def test_settings_are_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExploreSettings(**{field: value})


def test_rerank_rejects_bad_input() -> None:
    explorer = _explorer("greedy")
    with pytest.raises(ValueError, match="scores"):
        explorer.rerank([1, 2], [1.0], 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="repeat"):
        explorer.rerank([1, 1], [1.0, 0.5], 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k="):
        explorer.rerank([1, 2], [1.0, 0.5], 0, np.random.default_rng(0))
    assert ExploreSettings(method="thompson").method is ExploreMethod.THOMPSON
