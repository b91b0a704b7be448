import numpy as np
import torch

from seekrec.data.schema import IdMap, InteractionData
from seekrec.data.vocab import Catalog
from seekrec.online.event_log import LoggedEvent
from seekrec.online.histories import UserHistories


def _event(offset, user, item):
    return LoggedEvent(user_id=user, item_id=item, timestamp=1.0 + offset, offset=offset)


def test_from_dataset_then_live_events(sim_data_dir):
    data = InteractionData.read(sim_data_dir)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    hist = UserHistories.from_dataset(sim_data_dir, 5, catalog)
    assert len(hist) == data.n_users
    user = str(data.user_ids.raw[0])
    before = hist.get(user)
    assert 0 < len(before) <= 5
    n_items = len(catalog.items)
    applied = hist.apply([_event(1, user, "brand-new"), _event(2, "new-user", str(data.item_ids.raw[0]))], catalog)
    assert applied == [(user, n_items + 1), ("new-user", 1)]
    assert hist.get(user) == (before + [n_items + 1])[-5:] and catalog.counts[n_items + 1] == 1
    assert hist.apply([_event(2, "x", "1")], catalog) == []  # replayed offsets are ignored
    padded = hist.padded([user, "new-user", "nobody"], 4)
    assert padded.shape == (3, 4) and padded[2].tolist() == [0, 0, 0, 0] and padded[1].tolist() == [0, 0, 0, 1]


def test_server_mode_skips_unknown_items():
    catalog = Catalog.from_data(IdMap.fit([1, 2]), np.array([1]))
    hist = UserHistories(3)
    assert hist.apply([_event(1, "u", "999")], catalog, add_items=False) == []
    assert len(catalog.items) == 2 and hist.offset == 1


def test_user_cap_forgets_the_least_recently_active():
    """Before the cap, every invented user id stayed in memory for the life of the process."""
    catalog = Catalog.from_data(IdMap.fit([1, 2]), np.array([1]))
    hist = UserHistories(3, max_users=2)
    hist.apply([_event(1, "a", "1"), _event(2, "b", "1"), _event(3, "a", "2"), _event(4, "c", "1")], catalog)
    assert len(hist) == 2 and hist.evicted == 1
    assert "b" not in hist and hist.get("a") == [1, 2] and hist.get("c") == [1]  # a was active after b
    hist.apply([_event(5 + i, f"flood-{i}", "1") for i in range(1000)], catalog)
    assert len(hist) == 2 and hist.evicted == 1000 + 1


def test_user_cap_on_a_dataset_keeps_the_most_recently_active(sim_data_dir):
    data = InteractionData.read(sim_data_dir)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    users, _, ts = data.interactions()
    last = {str(data.user_ids.raw[u - 1]): t for u, t in sorted(zip(users.tolist(), ts.tolist()), key=lambda p: p[1])}
    hist = UserHistories.from_dataset(sim_data_dir, 5, catalog, max_users=10)
    assert len(hist) == 10 and hist.evicted == data.n_users - 10
    newest = sorted(last.values())[-10]
    assert all(last[user] >= newest for user in last if user in hist)


def _valued(offset, user, item, timestamp, value):
    return LoggedEvent(user_id=user, item_id=item, timestamp=timestamp, value=value, offset=offset)


def test_events_keep_times_and_values_through_apply_and_the_length_bound():
    catalog = Catalog.from_data(IdMap.fit([1, 2, 3]), np.array([1]))
    hist = UserHistories(2)
    hist.apply([_valued(1, "u", "1", 100.7, 4.0), _valued(2, "u", "2", 200.0, 2.5), _valued(3, "u", "3", 300.0, 1.0)],
               catalog)
    assert hist.get("u") == [2, 3]  # item ids only, as before
    assert hist.events("u") == [(2, 200, 2.5), (3, 300, 1.0)] and hist.last("u") == (3, 300, 1.0)
    assert hist.events("nobody") == [] and hist.last("nobody") is None


def test_events_of_users_kept_past_the_user_cap_keep_their_times():
    catalog = Catalog.from_data(IdMap.fit([1, 2]), np.array([1]))
    hist = UserHistories(3, max_users=2)
    hist.apply([_valued(1, "a", "1", 10, 5.0), _valued(2, "b", "2", 20, 3.0), _valued(3, "a", "2", 30, 1.0),
                _valued(4, "c", "1", 40, 2.0)], catalog)
    assert "b" not in hist and hist.events("b") == []
    assert hist.events("a") == [(1, 10, 5.0), (2, 30, 1.0)] and hist.events("c") == [(1, 40, 2.0)]


def test_from_dataset_keeps_the_datasets_times_and_values(sim_data_dir):
    from seekrec.data.splits import UserSequences

    data = InteractionData.read(sim_data_dir)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    hist = UserHistories.from_dataset(sim_data_dir, 5, catalog)
    users, items, ts = data.interactions()
    seqs = UserSequences.from_interactions(users, items, ts, data.n_users, values=data.event_values())
    ids = catalog.items.encode([str(r) for r in data.item_ids.raw])
    for uid in (1, 2, data.n_users):
        lo, hi = int(seqs.offsets[uid]), int(seqs.offsets[uid + 1])
        want = [(int(ids[i - 1]), int(t), float(v)) for i, t, v in
                zip(seqs.items[lo:hi], seqs.timestamps[lo:hi], seqs.values[lo:hi])][-5:]
        assert hist.events(str(data.user_ids.raw[uid - 1])) == want


def test_padded_with_context_is_what_evaluation_builds_for_the_same_history(sim_data_dir):
    """Served users get the context offline evaluation (``history_context``) gives the same history, with the
    request time where evaluation has the held-out event's time."""
    from seekrec.data.splits import load_split
    from seekrec.evaluation.ranking import history_context

    data, split = load_split(sim_data_dir, "leave_one_out")
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    ids = catalog.items.encode([str(r) for r in data.item_ids.raw])
    assert (ids == np.arange(1, len(ids) + 1)).all()  # same ids, so the two sides compare directly
    train, width, now = split.train, 6, 2_000_000_000
    hist = UserHistories(width)
    users = np.array([1, 2, 3, data.n_users])
    for uid in users.tolist():
        lo, hi = int(train.offsets[uid]), int(train.offsets[uid + 1])
        for i, t, v in zip(train.items[lo:hi], train.timestamps[lo:hi], train.values[lo:hi]):
            hist.append(str(data.user_ids.raw[uid - 1]), int(i), int(t), float(v))
    raw = [str(data.user_ids.raw[u - 1]) for u in users]
    items, context = hist.padded_with_context(raw, now)
    offline = history_context(train, users, np.full(len(users), now))  # [B, H] over the whole histories
    assert offline.times.shape[1] >= width
    offline = offline.last(width)
    assert torch.equal(items, torch.from_numpy(train.padded(users)[:, -width:]))
    assert torch.equal(items, hist.padded(raw))
    for name in ("times", "query_times", "values"):
        assert torch.equal(getattr(context, name), getattr(offline, name)), name
    assert (context.query_times[:, -1] == now).all()
    _, unknown = hist.padded_with_context(["nobody"], now)
    assert not unknown.times.any() and not unknown.query_times.any()  # all padding
