import numpy as np
import pytest
import torch

from seekrec.data.sequences import SequenceDataset, SequenceLoader
from seekrec.data.splits import UserSequences


def _seqs():
    # user 1: 1..6, user 2: 10, 11, user 3: a single event (too short to train on)
    users = np.array([1] * 6 + [2, 2, 3])
    items = np.array([1, 2, 3, 4, 5, 6, 10, 11, 20])
    return UserSequences.from_interactions(users, items, np.arange(9), 3)


def test_windows_shift_targets_by_one():
    ds = SequenceDataset(_seqs(), max_len=3)
    assert len(ds) == 2
    b = ds.batch(torch.tensor([0, 1]))
    assert b.input_ids.tolist() == [[3, 4, 5], [0, 0, 10]]
    assert b.target_ids.tolist() == [[4, 5, 6], [0, 0, 11]]
    assert b.user_ids.tolist() == [1, 2]


def test_stride_covers_earlier_windows():
    ds = SequenceDataset(_seqs(), max_len=3, stride=2)
    rows = {tuple(r) for r in ds.windows.tolist()}
    assert (3, 4, 5, 6) in rows and (1, 2, 3, 4) in rows and (0, 0, 1, 2) in rows


def test_loader_resume_and_sharding_match_single_process():
    rng = np.random.default_rng(1)
    seqs = UserSequences.from_interactions(rng.integers(1, 41, 400), rng.integers(1, 30, 400), np.arange(400), 40)
    ds = SequenceDataset(seqs, max_len=5)
    full = list(SequenceLoader(ds, 8, seed=3).iter_epoch(2))
    resumed = list(SequenceLoader(ds, 8, seed=3).iter_epoch(2, start_batch=2))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(full[2:], resumed))
    shards = [list(SequenceLoader(ds, 8, seed=3, rank=r, world_size=2).iter_epoch(2)) for r in range(2)]
    for k, batch in enumerate(full):
        together = torch.cat([shards[0][k].user_ids, shards[1][k].user_ids]).sort().values
        assert torch.equal(together, batch.user_ids.sort().values)
    assert not torch.equal(full[0].user_ids, next(SequenceLoader(ds, 8, seed=3).iter_epoch(3)).user_ids)


@pytest.mark.parametrize(("world_size", "batch_size"), [(2, 13), (3, 13), (5, 12)])
def test_any_world_size_shards_every_global_batch(world_size, batch_size):
    """Shares of a batch not divisible by the world differ by one; a rank past the end of a short last batch
    gets one all-padding row (no targets), so every rank still steps."""
    rng = np.random.default_rng(1)
    seqs = UserSequences.from_interactions(rng.integers(1, 41, 400), rng.integers(1, 30, 400), np.arange(400), 40)
    ds = SequenceDataset(seqs, max_len=5, with_context=True)  # 40 windows
    full = list(SequenceLoader(ds, batch_size, seed=3).iter_epoch(0))
    assert 0 < len(ds) % batch_size < world_size  # the last batch leaves some rank without an example
    shards = [list(SequenceLoader(ds, batch_size, seed=3, rank=r, world_size=world_size).iter_epoch(0))
              for r in range(world_size)]
    for k, batch in enumerate(full):
        mine = [shard[k] for shard in shards]
        real = [b for b in mine if (b.target_ids > 0).any()]
        assert max(len(b) for b in real) - min(len(b) for b in real) <= 1
        assert torch.equal(torch.cat([b.user_ids for b in real]).sort().values, batch.user_ids.sort().values)
        assert sum(int((b.target_ids > 0).sum()) for b in mine) == int((batch.target_ids > 0).sum())
        for empty in (b for b in mine if not (b.target_ids > 0).any()):
            assert k == len(full) - 1 and len(empty) == 1 and not empty.input_ids.any()
            assert empty.context is not None and not empty.context.times.any()
            empty.context.check(empty.input_ids)


def test_loader_validation():
    ds = SequenceDataset(_seqs(), max_len=3)
    with pytest.raises(ValueError, match="rank"):
        SequenceLoader(ds, 3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_len"):
        SequenceDataset(_seqs(), max_len=0)


def test_context_windows_align_with_the_item_windows():
    users = np.array([1] * 6 + [2, 2, 3])
    items = np.array([1, 2, 3, 4, 5, 6, 10, 11, 20])
    times = np.array([100, 110, 130, 170, 250, 410, 7, 9, 5])
    values = np.arange(9, dtype=np.float32) + 0.5
    seqs = UserSequences.from_interactions(users, items, times, 3, values=values)
    assert SequenceDataset(seqs, max_len=3).batch(torch.tensor([0])).context is None  # off by default
    ds = SequenceDataset(seqs, max_len=3, stride=2, with_context=True)
    b = ds.batch(torch.arange(len(ds)))
    by_item = {int(i): (int(t), float(v)) for i, t, v in zip(items, times, values)}
    for row in range(len(ds)):
        real = b.input_ids[row] != 0
        got = zip(b.input_ids[row][real].tolist(), b.context.times[row][real].tolist(),
                  b.context.values[row][real].tolist(), b.target_ids[row][real].tolist(),
                  b.context.query_times[row][real].tolist())
        for item, t, v, target, query in got:
            assert (t, v) == by_item[item] and query == by_item[target][0]  # query time: the target's timestamp
        assert (b.context.times[row][~real] == 0).all() and (b.context.query_times[row][~real] == 0).all()
    assert b.context.times.dtype == torch.int64 and b.context.values.dtype == torch.float32
    assert b.to("cpu").context.times.shape == b.input_ids.shape
