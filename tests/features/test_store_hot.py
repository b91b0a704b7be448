"""Hot items in front of each backend: the same rows as the backend alone, attributes read once per hot item, window
counts still live, an edited item re-read."""

from seekrec.features.store import FeatureStore
from seekrec.features.store_hot import HotItemAttributes
from seekrec.online.event_log import Event
from tests.features.helpers import T0, assert_batches_equal


def test_hot_items_give_the_backends_rows_and_read_attributes_once(make_store, ml_like_spec, ml_like):
    reference = make_store(ml_like_spec)
    reference.load_static(ml_like)
    items = [str(i) for i in ml_like.item_ids.raw[:30].tolist()] + ["never-seen"]
    lookups: list[tuple[str, int]] = []
    hot = HotItemAttributes(reference.backend, items[:10], lambda result, n: lookups.append((result, n)))
    store = FeatureStore(ml_like_spec, hot)
    asked: list[list[bool]] = []  # what the hot store asked its backend (the reference reads the same one)
    read = hot.backend.read

    def spy(side, ids, now, windows_s, history, attributes=True):  # noqa: ANN001, ANN202
        if side == "item" and not isinstance(attributes, bool):
            asked.append(list(attributes))
        return read(side, ids, now, windows_s, history, attributes)

    hot.backend.read = spy  # type: ignore[method-assign]
    for step in range(3):
        store.apply([Event("u", items[step], T0 + step), Event("v", items[15], T0 + step)])  # counts move
        now = T0 + 10 + step
        assert_batches_equal(store.item_features(items, now), reference.item_features(items, now))
        assert_batches_equal(store.user_features(["u"], now), reference.user_features(["u"], now))
    item_reads = asked
    assert item_reads[0] == [True] * len(items)  # the first read fetches every attribute ...
    assert item_reads[1] == [False] * 10 + [True] * 21  # ... then only those of the cold items
    assert lookups[:3] == [("miss", 10), ("hit", 10), ("hit", 10)] and len(hot) == 10
    hot.put_attributes("item", {items[0]: {"title": "Renamed", "genres": ["Drama"], "year": 1999}})
    assert len(hot) == 9  # the edited item is read again, with its new title
    now = T0 + 20
    assert_batches_equal(store.item_features(items, now), reference.item_features(items, now))
    assert store.item_rows(items[:1], now)["title"].tolist() == ["Renamed"]
