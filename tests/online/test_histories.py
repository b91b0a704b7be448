import numpy as np

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
