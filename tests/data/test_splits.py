import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.data.splits import UserSequences, leave_one_out, make_split, temporal_split


@st.composite
def event_logs(draw):
    n_users = draw(st.integers(1, 8))
    n = draw(st.integers(1, 60))
    users = draw(st.lists(st.integers(1, n_users), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))  # many equal timestamps
    return np.array(users), np.array(items), np.array(ts), n_users


@settings(max_examples=80, deadline=None)
@given(event_logs())
def test_leave_one_out_properties(log):
    users, items, ts, n_users = log
    seqs = UserSequences.from_interactions(users, items, ts, n_users)
    split = leave_one_out(seqs)
    for k, u in enumerate(split.test.users):
        mask = users == u
        order = np.lexsort((np.arange(mask.sum()), ts[mask]))
        raw_items, raw_ts = items[mask][order], ts[mask][order]
        # the test target is the latest event (file order breaks timestamp ties)
        assert split.test.targets[k] == raw_items[-1]
        # no training event is later than the test event
        train_u = split.train.row(u)
        assert len(train_u) == len(raw_items) - (2 if len(raw_items) >= 3 else 1)
        assert np.all(split.train.timestamps[split.train.offsets[u]:split.train.offsets[u + 1]] <= raw_ts[-1])
        assert split.test.history.row(u).tolist() == raw_items[:-1].tolist()
    for k, u in enumerate(split.valid.users):
        assert split.valid.targets[k] == split.test.history.row(u)[-1]
        assert split.valid.history.row(u).tolist() == split.train.row(u).tolist()
    lengths = np.bincount(users, minlength=n_users + 1)
    assert set(split.test.users) == set(np.flatnonzero(lengths >= 2))
    assert set(split.valid.users) == set(np.flatnonzero(lengths >= 3))
    assert split.train.n_events + len(split.valid) + len(split.test) == len(users)


def test_equal_timestamps_keep_file_order():
    seqs = UserSequences.from_interactions(np.array([1, 1, 1]), np.array([7, 8, 9]), np.array([5, 5, 5]), 1)
    assert seqs.row(1).tolist() == [7, 8, 9]
    split = leave_one_out(seqs)
    assert split.test.targets.tolist() == [9] and split.valid.targets.tolist() == [8]


def test_padded_left_pads_and_truncates():
    seqs = UserSequences.from_interactions(np.array([1, 1, 1, 2]), np.array([3, 4, 5, 6]), np.arange(4), 3)
    assert seqs.padded(np.array([1, 2, 3])).tolist() == [[3, 4, 5], [0, 0, 6], [0, 0, 0]]
    assert seqs.padded(np.array([1]), max_len=2).tolist() == [[4, 5]]


def test_temporal_split_no_future_in_history():
    rng = np.random.default_rng(0)
    users, items, ts = rng.integers(1, 30, 600), rng.integers(1, 50, 600), rng.integers(0, 10_000, 600)
    seqs = UserSequences.from_interactions(users, items, ts, 29)
    split = temporal_split(seqs, 0.7, 0.85)
    t1 = split.train.timestamps.max()
    assert np.all(split.valid.history.timestamps <= t1)
    assert split.test.history.timestamps.max() >= t1
    for k, u in enumerate(split.test.users):
        row_ts = seqs.timestamps[seqs.offsets[u]:seqs.offsets[u + 1]]
        hist_len = split.test.history.lengths()[u]
        assert row_ts[hist_len] > split.test.history.timestamps.max() - 1  # target after all history
    with pytest.raises(ValueError, match="unknown split"):
        make_split(seqs, "random")


def test_values_travel_with_their_events_and_target_times_are_the_held_out_timestamps():
    rng = np.random.default_rng(3)
    n_users, n_events = 12, 150
    users, items = rng.integers(1, n_users + 1, n_events), rng.integers(1, 40, n_events)
    ts = rng.integers(0, 10_000, n_events)
    values = rng.integers(1, 6, n_events).astype(np.float32)
    seqs = UserSequences.from_interactions(users, items, ts, n_users, values=values)
    event_value = {(int(u), int(i), int(t)): float(v) for u, i, t, v in zip(users, items, ts, values)}
    for split in (leave_one_out(seqs), temporal_split(seqs)):
        for part in (split.train, split.valid.history, split.test.history):
            stored = zip(part.user_of_event(), part.items, part.timestamps, part.values)
            assert all(event_value[(int(u), int(i), int(t))] == v for u, i, t, v in stored)
        for eval_set in (split.valid, split.test):
            hist_len = eval_set.history.lengths()[eval_set.users]
            at = seqs.offsets[eval_set.users] + hist_len  # the held-out event follows the visible history
            assert eval_set.target_times.tolist() == seqs.timestamps[at].tolist()
            assert eval_set.targets.tolist() == seqs.items[at].tolist()
    last4 = slice(seqs.offsets[2] - 4, seqs.offsets[2])  # user 1's last four events
    padded = seqs.padded(np.array([1, 2]), 4, column="values")
    assert padded.dtype == np.float32 and padded[0].tolist() == seqs.values[last4].tolist()
    assert seqs.padded(np.array([1]), 4, column="timestamps")[0].tolist() == seqs.timestamps[last4].tolist()
    with pytest.raises(ValueError, match="no values"):
        UserSequences.from_interactions(users, items, ts, n_users).padded(np.array([1]), column="values")
