import numpy as np
import pytest
import torch

from seekrec.data.splits import UserSequences, leave_one_out
from seekrec.evaluation.ranking import METRIC_KEYS, EvalBatch, evaluate, rank_targets


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
