import numpy as np
import pytest
import torch

from seekrec.data.splits import EvalSet, UserSequences, leave_one_out
from seekrec.evaluation.ranking import METRIC_KEYS, EvalBatch, ModelScorer, evaluate, rank_targets
from seekrec.models.factory import build_model
from seekrec.models.layers.context import SequenceContext
from tests.models.helpers import TINY


class RandomScorer:
    """Deterministic pseudo-random scores with many ties (rounded), per user."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.round(torch.rand(100, n_items + 1, generator=gen) * 4) / 4

    def score(self, batch: EvalBatch) -> torch.Tensor:
        return self.table[batch.users].clone()


def brute_force_rank(scores: np.ndarray, target: int, seen: set[int], mask: bool) -> int:
    """Reference: count, one item at a time, the candidates scoring at least as high as the target."""
    rank = 0
    for item in range(1, len(scores)):
        if item == target or (mask and item in seen):
            continue
        if scores[item] >= scores[target]:
            rank += 1
    return rank


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_evaluator_matches_brute_force(mask, batch_size):
    rng = np.random.default_rng(4)
    n_users, n_items = 25, 30
    users, items = rng.integers(1, n_users + 1, 400), rng.integers(1, n_items + 1, 400)
    seqs = UserSequences.from_interactions(users, items, rng.integers(0, 50, 400), n_users)
    split = leave_one_out(seqs)
    scorer = RandomScorer(n_items)
    result = evaluate(scorer, split.test, n_items, batch_size=batch_size, mask_history=mask)
    expected = [
        brute_force_rank(scorer.table[u].numpy(), t, set(split.test.history.row(u).tolist()), mask)
        for u, t in zip(split.test.users, split.test.targets)
    ]
    assert result.ranks.tolist() == expected
    assert set(METRIC_KEYS) <= set(result.metrics) and result.n_users == len(split.test)


def test_ties_count_against_the_model_and_padding_is_never_a_candidate():
    scores = torch.tensor([[9.0, 1.0, 1.0, 1.0]])  # padding column scores highest
    rank, _ = rank_targets(scores, torch.tensor([2]), None)
    assert rank.item() == 2  # items 1 and 3 tie with the target


def test_history_masked_but_target_kept():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0]])
    history = torch.tensor([[0, 1, 3]])  # the target 3 is a repeat of a seen item
    rank, _ = rank_targets(scores, torch.tensor([3]), history)
    assert rank.item() == 1  # only item 2 is a remaining candidate above it


def test_nan_scores_and_bad_shapes_are_refused():
    seqs = UserSequences.from_interactions(np.array([1, 1, 1]), np.array([1, 2, 3]), np.arange(3), 1)
    split = leave_one_out(seqs)

    class NaNScorer:
        def score(self, batch):
            return torch.full((len(batch.users), 4), float("nan"))

    class ShortScorer:
        def score(self, batch):
            return torch.zeros(len(batch.users), 2)

    with pytest.raises(ValueError, match="NaN"):
        evaluate(NaNScorer(), split.test, 3)
    with pytest.raises(ValueError, match="shape"):
        evaluate(ShortScorer(), split.test, 3)


def _chains(lengths: list[int], n_items: int, seed: int) -> UserSequences:
    """User ``u`` consumes ``lengths[u - 1]`` consecutive item ids from a random start, in time order."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user, length in enumerate(lengths, start=1):
        start = int(rng.integers(1, n_items - length + 2))
        users += [user] * length
        items += range(start, start + length)
    return UserSequences.from_interactions(np.array(users), np.array(items), np.arange(len(users)), len(lengths))


class SuccessorModel:
    """Scores the successor of ``input_ids[:, -1]`` highest: right only if index -1 holds the last real item."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.widths: list[int] = []

    def score_all(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.widths.append(input_ids.shape[1])
        scores = torch.zeros(input_ids.shape[0], self.n_items + 1)
        scores[torch.arange(input_ids.shape[0]), input_ids[:, -1] % self.n_items + 1] = 1.0
        return scores


@pytest.mark.parametrize("which", ["valid", "test"])
def test_model_scorer_reads_the_last_real_item_at_both_splits(which):
    """Validation and test histories (the test one is one item longer) are left-padded and cut to their
    last max_len items, so index -1 is the item just before the target, whatever the history length."""
    max_len, n_items = 8, 100
    split = leave_one_out(_chains([3, 5, 8, 9, 10, 11, 17, 30], n_items, seed=0))
    model = SuccessorModel(n_items)
    result = evaluate(ModelScorer(model, max_len), split.eval_set(which), n_items, batch_size=3)
    assert result.ranks.tolist() == [0] * len(split.eval_set(which))
    assert max(model.widths) == max_len


class RecordingScorer:
    """A ``ModelScorer`` that keeps each user's score row."""

    def __init__(self, scorer: ModelScorer) -> None:
        self.scorer, self.rows = scorer, {}

    def score(self, batch: EvalBatch) -> torch.Tensor:
        scores = self.scorer.score(batch)
        self.rows.update(zip(batch.users.tolist(), scores.clone()))
        return scores


@pytest.mark.parametrize("which", ["valid", "test"])
@pytest.mark.parametrize("name", ["sasrec", "deepseek"])
def test_batched_model_scores_equal_each_user_scored_alone(name, which):
    """Both models give a user the scores of their own last max_len items, unpadded: padding to the
    batch's longest history and the batch's other users change nothing, at validation and at test."""
    n_items, max_len = 40, TINY[name]["max_len"]
    torch.manual_seed(0)
    model = build_model(name, TINY[name], n_items).eval()
    eval_set = leave_one_out(_chains([3, 6, 12, 17, 18, 19, 25, 40], n_items, seed=1)).eval_set(which)
    recorder = RecordingScorer(ModelScorer(model, max_len))
    evaluate(recorder, eval_set, n_items, batch_size=3)
    with torch.no_grad():
        for user in eval_set.users.tolist():
            alone = torch.from_numpy(eval_set.history.row(user)[-max_len:])[None]  # [1, <= max_len]
            torch.testing.assert_close(recorder.rows[user], model.score_all(alone)[0], atol=1e-5, rtol=1e-5)


class ContextRecordingScorer(RecordingScorer):
    needs_context = True


@pytest.mark.parametrize("which", ["valid", "test"])
@pytest.mark.parametrize("name", ["sasrec", "deepseek"])
def test_context_models_are_scored_from_their_own_times_values_and_target_time(name, which):
    """A model with event-time inputs sees its last max_len events' times and values, and the held-out
    event's timestamp as the query time of the last position, however the batch is padded."""
    n_items, max_len = 40, TINY[name]["max_len"]
    torch.manual_seed(0)
    config = {**TINY[name], "time_features": True, "action_features": True, "relative_time_bias": True}
    model = build_model(name, config, n_items).eval()
    base = _chains([3, 6, 12, 17, 18, 19, 25, 40], n_items, seed=1)
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.integers(1, 10**6, base.n_events))  # increasing within every user
    seqs = UserSequences(base.offsets, base.items, times, rng.integers(1, 6, base.n_events).astype(np.float32))
    eval_set = leave_one_out(seqs).eval_set(which)
    scorer = ModelScorer(model, max_len)
    assert scorer.needs_context
    recorder = ContextRecordingScorer(scorer)
    evaluate(recorder, eval_set, n_items, batch_size=3)
    with torch.no_grad():
        for user, target_time in zip(eval_set.users.tolist(), eval_set.target_times.tolist()):
            lo, hi = eval_set.history.offsets[user], eval_set.history.offsets[user + 1]
            lo = max(lo, hi - max_len)
            ids = torch.from_numpy(eval_set.history.items[lo:hi])[None]
            event_times = torch.from_numpy(eval_set.history.timestamps[lo:hi])[None]
            query = torch.cat([event_times[:, 1:], torch.tensor([[target_time]])], dim=1)
            context = SequenceContext(event_times, query, torch.from_numpy(eval_set.history.values[lo:hi])[None])
            torch.testing.assert_close(recorder.rows[user], model.score_all(ids, context)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="target_times"):
        evaluate(scorer, EvalSet(eval_set.users, eval_set.targets, eval_set.history), n_items)
