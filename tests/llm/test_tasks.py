import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seekrec.data.splits import UserSequences
from seekrec.llm.examples import Requests, UserEvents
from seekrec.llm.scoring import PairBatch
from seekrec.llm.tasks import PointwiseTask, RequestEpochs, RerankTask, TaskSettings
from seekrec.training.config import TrainConfig

N_ITEMS = 30


def collate(histories, items, labels=None, group_size=1):
    """A stand-in for ranker.collate: one token per pair (the item id), the histories' lengths as prefixes."""
    ids = torch.tensor(items, dtype=torch.long)[:, None]
    prefix = torch.tensor([len(h) for h in histories], dtype=torch.long)[:, None]
    return PairBatch(ids, torch.ones_like(ids), torch.zeros(len(items), dtype=torch.long),
                     None if labels is None else torch.as_tensor(np.asarray(labels, dtype=np.float32)),
                     group_size, prefix, torch.ones_like(prefix), group_size if len(histories) < len(items) else 1)


class ItemScores(torch.nn.Module):
    """Scores a pair by a learnt weight of its item."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, N_ITEMS + 1))

    def forward(self, batch: PairBatch) -> torch.Tensor:
        return self.weight[batch.input_ids[:, 0]]


@pytest.fixture(scope="module")
def world():
    """12 users with 8 events each over 30 items, ratings 1-5; requests at their last 3 training positions."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 13), 8)
    items = np.concatenate([rng.choice(np.arange(1, N_ITEMS + 1), 8, replace=False) for _ in range(12)])
    times = np.tile(np.arange(8), 12) * 100 + users
    events = UserEvents(UserSequences.from_interactions(users, items, times, 12),
                        rng.integers(1, 6, len(users)).astype(np.float32))
    train = events.seqs.drop_last(2)
    req_users = np.repeat(np.arange(1, 13), 3)
    lengths = np.tile([3, 4, 5], 12)
    targets = np.array([train.row(u)[n] for u, n in zip(req_users, lengths)])
    pools = np.stack([rng.permutation(np.setdiff1d(np.arange(1, N_ITEMS + 1), train.row(u)))[:10] for u in req_users])
    requests = Requests(req_users, lengths, targets, pools, np.sort(rng.normal(size=pools.shape))[:, ::-1].copy(),
                        np.full(len(req_users), -1), np.zeros(len(req_users), dtype=np.int64))
    return events, train, requests


def epochs(world, settings, rank=0, world_size=1, **train):
    events, train_rows, requests = world
    config = TrainConfig(**{"batch_size": 8, "seed": 3, **train})
    return RequestEpochs(requests, events, collate, settings, config, exclude=train_rows,
                         popularity=np.bincount(train_rows.items, minlength=N_ITEMS + 1).astype(float), rank=rank,
                         world_size=world_size)


def _flat(groups):
    return [(b.input_ids.ravel().tolist(), b.labels.tolist()) for group in groups for b in group]


def test_batches_are_the_same_whatever_the_start_and_change_with_the_epoch(world):
    source = epochs(world, TaskSettings(n_negatives=4), grad_accum=2)
    first = list(source.epoch(0, 0))
    assert len(first) == source.steps_per_epoch == 5 and all(len(g) == 2 for g in first[:-1])
    assert _flat(list(source.epoch(0, 3))) == _flat(first[3:])  # resume at batch 3
    assert _flat(first) == _flat(list(source.epoch(0, 0)))
    assert _flat(first) != _flat(list(source.epoch(1, 0)))
    seen_groups = sum(b.n_targets for g in first for b in g)
    assert seen_groups == len(world[2])  # every request once per epoch


@pytest.mark.parametrize("negatives", ["retriever", "popularity"])
def test_ranks_share_out_the_groups_of_one_process_and_pad_an_empty_share(world, negatives):
    """Three ranks, micro-batches of 2 groups: every group (with its negatives) of the one-process epoch lands on
    exactly one rank; the rank with nothing trains on a padding batch with no loss term."""
    settings = TaskSettings(n_negatives=3, negatives=negatives)
    alone = list(epochs(world, settings, grad_accum=4).epoch(0, 0))
    ranks = [list(epochs(world, settings, rank, 3, grad_accum=4).epoch(0, 0)) for rank in range(3)]
    padded = 0
    for step, micro_batches in enumerate(alone):
        assert all(len(r[step]) == len(micro_batches) for r in ranks)  # every rank runs as many forwards
        for k, batch in enumerate(micro_batches):
            groups = batch.input_ids.view(-1, 4).tolist()
            shares = [r[step][k] for r in ranks]
            for rank, share in enumerate(shares):
                if share.padding:
                    padded += 1
                    assert share.n_targets == 0 and len(share) == 4  # a copy of one group, weightless
                else:
                    assert share.input_ids.view(-1, 4).tolist() == groups[rank::3]
    assert padded == sum(len(m) for m in alone)  # rank 2 gets nothing from any micro-batch of 2 groups
    with pytest.raises(ValueError, match="rank 3 must lie in 0..2"):
        epochs(world, settings, 3, 3)


@pytest.mark.parametrize("negatives", ["retriever", "popularity"])
def test_groups_hold_the_positive_first_and_distinct_unseen_negatives(world, negatives):
    _, train, requests = world
    source = epochs(world, TaskSettings(n_negatives=4, negatives=negatives))
    order = np.random.default_rng([3, 0]).permutation(len(requests))
    batch = next(iter(source.epoch(0, 0)))[0]
    groups = batch.input_ids.view(-1, 5).numpy()
    assert batch.group_size == 5 and batch.labels.view(-1, 5)[:, 0].eq(1).all() and batch.labels.sum() == len(groups)
    for g, m in zip(groups, order[:8]):
        assert g[0] == requests.targets[m] and len(set(g[1:])) == 4 and requests.targets[m] not in g[1:]
        assert not set(g[1:]) & set(train.row(int(requests.users[m])).tolist())
        if negatives == "retriever":
            assert set(g[1:]) <= set(requests.candidates[m].tolist())


def test_like_labels_are_the_rating_threshold(world):
    events, _, requests = world
    source = epochs(world, TaskSettings(task="pointwise", label="like", like_threshold=4.0))
    batch = next(iter(source.epoch(0, 0)))[0]
    order = np.random.default_rng([3, 0]).permutation(len(requests))[:8]
    expected = [events.value_at(int(requests.users[m]), int(requests.lengths[m])) >= 4 for m in order]
    assert batch.group_size == 1 and batch.labels.tolist() == [float(x) for x in expected]
    assert batch.input_ids[:, 0].tolist() == requests.targets[order].tolist()


def test_rerank_loss_is_softmax_cross_entropy_over_each_group(world):
    batch = next(iter(epochs(world, TaskSettings(n_negatives=3)).epoch(0, 0)))[0]
    model = ItemScores()
    loss, stats = RerankTask(model).step_loss(batch)
    scores = model(batch).view(-1, 4)
    assert loss.item() == pytest.approx(F.cross_entropy(scores, torch.zeros(len(scores), dtype=torch.long)).item())
    assert int(stats["n_targets"]) == 8 == batch.n_targets  # groups, what TrainStep's count_targets reads


def test_pointwise_loss_is_binary_cross_entropy_over_pairs(world):
    batch = next(iter(epochs(world, TaskSettings(task="pointwise", n_negatives=2)).epoch(0, 0)))[0]
    model = ItemScores()
    loss, stats = PointwiseTask(model).step_loss(batch)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(model(batch), batch.labels).item())
    assert int(stats["n_targets"]) == batch.n_targets == 8


def test_settings_and_sizes_are_checked(world):
    with pytest.raises(ValueError, match="pointwise task"):
        TaskSettings(task="rerank", label="like")
    with pytest.raises(ValueError, match="task must be"):
        TaskSettings(task="listwise")
    with pytest.raises(ValueError, match="n_negatives=11 is more than the n_candidates=10"):
        epochs(world, TaskSettings(n_negatives=11))
    with pytest.raises(ValueError, match="divisible"):
        epochs(world, TaskSettings(), batch_size=8, grad_accum=3)
