"""One suite for every feature store backend (``make_store`` is parametrised: embedded, redis)."""

import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seekrec.features.examples import OfflineRows
from seekrec.features.history import Events
from seekrec.features.rows import ITEM_ID, SEQ_ITEMS
from seekrec.features.store import FeatureStore, StoreLimits
from seekrec.features.store_embedded import EmbeddedBackend
from seekrec.online.event_log import Event, LoggedEvent
from tests.features.helpers import DAY, T0, assert_batches_equal


def _raw_events(data, events: Events) -> list[Event]:
    users = data.user_ids.decode(events.users).tolist()
    items = data.item_ids.decode(events.items).tolist()
    return [Event(str(u), str(i), float(t)) for u, i, t in zip(users, items, events.timestamps.tolist())]


def _stream(store: FeatureStore, events: list, chunk: int = 97) -> None:
    for lo in range(0, len(events), chunk):
        store.apply(events[lo:lo + chunk])


def test_online_features_after_streaming_equal_offline_features_at_the_same_time(make_store, ml_like_spec, ml_like):
    events = Events.from_data(ml_like).time_order()
    now = int(np.quantile(events.timestamps, 0.7))
    history = events.before(now)
    store = make_store(ml_like_spec)
    store.load_static(ml_like)
    _stream(store, _raw_events(ml_like, history))
    offline = OfflineRows(ml_like_spec, ml_like, history)
    for side, idmap, n in (("user", ml_like.user_ids, ml_like.n_users), ("item", ml_like.item_ids, ml_like.n_items)):
        raw = [str(r) for r in idmap.raw.tolist()] + ["never-seen"]
        ids = np.append(np.arange(1, n + 1), 0)
        online = ml_like_spec.transform(side, store.rows(side, raw, now))
        assert_batches_equal(online, offline.features(side, ids, np.full(len(ids), now)))
        for k in (0, 5, len(raw) - 1):  # one request for one id gives that row of the batch
            assert_batches_equal(ml_like_spec.transform(side, store.rows(side, [raw[k]], now)),
                                 online.index(torch.tensor([k])))
    assert store.user_features(["never-seen"], now).sequence.sum() == 0


@st.composite
def streams(draw):
    n = draw(st.integers(0, 30))
    users = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([0, 60, 3600, DAY, 3 * DAY]), min_size=n, max_size=n))  # ties too
    after = draw(st.lists(st.sampled_from([1, 3600, DAY + 1, 8 * DAY]), min_size=4, max_size=4))
    return np.array(users), np.array(items), T0 + np.cumsum(gaps, dtype=np.int64), np.array(after)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams())
def test_any_stream_gives_the_offline_features(make_store, ml_like_spec, ml_like, stream):
    users, items, times, after = stream
    events = Events(users, items, times)
    store = make_store(ml_like_spec)
    store.load_static(ml_like)
    _stream(store, _raw_events(ml_like, events), chunk=7)
    last = int(times.max()) if len(times) else T0
    now = last + after  # one time per row, after the last event (see the store's docstring for ties)
    ids = np.array([1, 2, 3, 4])
    offline = OfflineRows(ml_like_spec, ml_like, events)
    for side, idmap in (("user", ml_like.user_ids), ("item", ml_like.item_ids)):
        raw = [str(r) for r in idmap.decode(ids).tolist()]
        assert_batches_equal(ml_like_spec.transform(side, store.rows(side, raw, now.astype(float))),
                             offline.features(side, ids, now))


def test_unknown_ids_and_missing_attributes_give_zero_features(make_store, ml_like_spec):
    store = make_store(ml_like_spec)
    store.put_attributes("user", {"u1": {"age": None, "gender": float("nan"), "occupation": "", "zip": None}})
    for user in ("u1", "nobody"):
        batch = store.user_features([user], T0)
        assert all(not ids.any() for ids in batch.categorical.values())
        assert not batch.dense.any() and not batch.sequence.any() and not batch.recency.any()
    items = store.item_features(["nothing-here"], T0)
    assert not items.text.any() and not items.dense.any() and not items.categorical["genres"].any()
    assert len(store.user_features([], T0)) == 0


def test_a_new_item_gets_features_from_its_title_and_its_events(make_store, ml_like_spec, ml_like):
    store = make_store(ml_like_spec)
    store.load_static(ml_like)
    store.put_attributes("item", {"new": {"title": "Moon Opera", "genres": ["Comedy", "Drama"], "year": 2024}})
    known = str(ml_like.item_ids.raw[0])
    store.apply([Event("u", "new", T0), Event("u", known, T0 + 1), Event("v", "new", T0 + 2)])
    rows = store.item_rows(["new"], T0 + 10)
    assert rows[ITEM_ID].tolist() == [0]
    batch = ml_like_spec.transform("item", rows)
    text = ml_like_spec.column("item", "text")
    np.testing.assert_array_equal(batch.text.numpy(), text.embed_texts(["Moon Opera Comedy Drama"]))
    genres = ml_like_spec.column("item", "genres")
    assert batch.categorical["genres"][0, :2].tolist() == [genres.encode_key("Comedy"), genres.encode_key("Drama")]
    assert batch.categorical["year"].item() == len(ml_like_spec.column("item", "year").boundaries) + 1
    assert rows["counts"].tolist() == [[2, 2]]
    user_rows = store.user_rows(["u"], T0 + 10)
    assert user_rows[SEQ_ITEMS][0, -2:].tolist() == [0, 1]  # the new item has no model id yet
    assert ml_like_spec.transform("user", user_rows).sequence[0, -2:].tolist() == [0, 1]


def test_logged_events_are_applied_once(make_store, ml_like_spec):
    store = make_store(ml_like_spec)
    logged = [LoggedEvent("u", "i", T0 + k, offset=k + 1) for k in range(4)]
    assert store.apply(logged[:3]) == 3 and store.offset() == 3
    assert store.apply(logged) == 1 and store.offset() == 4  # the first three were applied already
    assert store.apply(logged) == 0
    assert store.user_rows(["u"], T0 + 10)["counts"].tolist() == [[4, 4]]
    assert store.apply([Event("u", "i", T0 + 5)]) == 1 and store.offset() == 4  # plain events carry no offset


def test_a_restarted_log_is_followed_from_its_start_keeping_what_was_learned(make_store, ml_like_spec):
    store = make_store(ml_like_spec)
    assert store.apply([LoggedEvent("u", "i", T0 + k, offset=k + 1) for k in range(4)]) == 4
    restarted = [LoggedEvent("u", "i", T0 + 10, offset=1)]  # the log began again at offset 1
    assert store.apply(restarted) == 0, "without being told, the store skips it as already applied"
    store.follow_restarted_log()
    assert store.offset() == 0 and store.apply(restarted) == 1 and store.offset() == 1
    assert store.user_rows(["u"], T0 + 11)["counts"].tolist() == [[5, 5]]  # the four before the reset stay


def test_sequences_keep_the_last_events_and_windows_slide(make_store, ml_like_spec, ml_like):
    store = make_store(ml_like_spec)
    raw = [str(r) for r in ml_like.item_ids.raw[:10].tolist()]
    store.apply([Event("u", raw[k], T0 + k * DAY) for k in range(10)])
    rows = store.user_rows(["u"], T0 + 9 * DAY + 1)
    assert rows[SEQ_ITEMS].tolist() == [list(range(5, 11))]  # the last 6 of items 1..10
    assert rows["counts"].tolist() == [[1, 7]]  # [now - 1d, now) holds day 9; [now - 7d, now) days 3..9
    # now = the last event's time: that event is not before now, and the store kept only the last 6,
    # so one slot stays empty (offline would show item 4 there); counts remain exact
    earlier = store.user_rows(["u"], T0 + 9 * DAY)
    assert earlier[SEQ_ITEMS].tolist() == [[0, 5, 6, 7, 8, 9]] and earlier["counts"].tolist() == [[1, 7]]
    later = store.user_rows(["u"], T0 + 30 * DAY)
    assert later["counts"].tolist() == [[0, 0]] and later[SEQ_ITEMS][0, -1] == 10


def test_attributes_must_be_json_values(make_store, ml_like_spec):
    store = make_store(ml_like_spec)
    with pytest.raises(ValueError, match="'title'"):
        store.put_attributes("item", {"x": {"title": object()}})
    with pytest.raises(ValueError, match="side"):
        store.put_attributes("shop", {})


def test_a_backend_must_keep_what_the_spec_needs(ml_like_spec):
    with pytest.raises(ValueError, match="StoreLimits.from_spec"):
        FeatureStore(ml_like_spec, EmbeddedBackend(StoreLimits(sequence_len=2, horizon_s=DAY)))


def test_embedded_snapshot_restores_the_same_features(ml_like_spec, ml_like, tmp_path):
    store = FeatureStore.embedded(ml_like_spec)
    store.load_static(ml_like)
    events = _raw_events(ml_like, Events.from_data(ml_like).time_order())
    store.apply([LoggedEvent(e.user_id, e.item_id, e.timestamp, offset=k + 1) for k, e in enumerate(events)])
    path = tmp_path / "store.sqlite"
    path.write_text("an older snapshot")
    store.snapshot(path)  # replaces the old file in one rename
    restored = FeatureStore.restore(ml_like_spec, path)
    assert restored.offset() == len(events)
    now = float(Events.from_data(ml_like).timestamps.max() + 1)
    users, items = [str(u) for u in ml_like.user_ids.raw], [str(i) for i in ml_like.item_ids.raw]
    assert_batches_equal(restored.user_features(users, now), store.user_features(users, now))
    assert_batches_equal(restored.item_features(items, now), store.item_features(items, now))
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(FileNotFoundError, match="snapshot"):
        FeatureStore.restore(ml_like_spec, tmp_path / "missing.sqlite")


def test_redis_answers_a_request_in_one_round_trip(ml_like_spec, ml_like, redis_url, monkeypatch):
    import redis

    store = FeatureStore.redis(ml_like_spec, redis_url, prefix="seekrec-test:round-trip")
    try:
        store.load_static(ml_like)
        store.apply([Event("u", str(ml_like.item_ids.raw[0]), T0)])
        calls = []
        monkeypatch.setattr(redis.client.Pipeline, "execute", _counting(redis.client.Pipeline.execute, calls))
        monkeypatch.setattr(redis.Redis, "execute_command", _counting(redis.Redis.execute_command, calls))
        batch = store.user_features(["u", "v"], T0 + 1)
        assert len(calls) == 1 and batch.sequence[0, -1].item() == 1
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match="seekrec-test:round-trip:*"))
        if keys:
            client.delete(*keys)
        client.close()
        store.close()


def _counting(method, calls: list):
    def wrapper(self, *args, **kwargs):
        calls.append(method.__name__)
        return method(self, *args, **kwargs)
    return wrapper


def test_features_are_tensors_ready_for_a_model(ml_like_spec):
    store = FeatureStore.embedded(ml_like_spec)
    batch = store.user_features(["a", "b", "c"], T0)
    assert batch.sequence.dtype == torch.long and batch.recency.dtype == torch.float32 and len(batch) == 3


# -- a Redis store that server replicas share ---------------------------------------------------------------
def _logged(ml_like, n: int) -> list[LoggedEvent]:
    """The dataset's first ``n`` events in time order as a log would hand them out (offsets 1..n)."""
    events = _raw_events(ml_like, Events.from_data(ml_like).time_order())[:n]
    return [LoggedEvent(e.user_id, e.item_id, e.timestamp, offset=k + 1) for k, e in enumerate(events)]


def _assert_same_features(store: FeatureStore, reference: FeatureStore, ml_like, now: float) -> None:
    users = [str(u) for u in ml_like.user_ids.raw[:40].tolist()]
    items = [str(i) for i in ml_like.item_ids.raw[:40].tolist()]
    assert_batches_equal(store.user_features(users, now), reference.user_features(users, now))
    assert_batches_equal(store.item_features(items, now), reference.item_features(items, now))


def test_replicas_feeding_one_shared_store_at_once_apply_each_logged_event_once(ml_like_spec, ml_like, redis_url,
                                                                                redis_prefix):
    logged = _logged(ml_like, 800)
    reference = FeatureStore.embedded(ml_like_spec)
    _stream(reference, logged)
    replicas = [FeatureStore.shared(ml_like_spec, f"{redis_url}?prefix={redis_prefix}") for _ in range(3)]
    # every replica applies the whole log, in its own chunks, while the others do the same
    threads = [threading.Thread(target=_stream, args=(store, logged, chunk))
               for store, chunk in zip(replicas, (13, 50, 97))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(store.offset() == len(logged) for store in replicas)
    _assert_same_features(replicas[1], reference, ml_like, logged[-1].timestamp + 1)


def test_only_the_first_replica_to_see_a_restarted_log_rewinds_a_shared_store(ml_like_spec, redis_url, redis_prefix):
    first, second = (FeatureStore.shared(ml_like_spec, f"{redis_url}?prefix={redis_prefix}") for _ in range(2))
    assert first.apply([LoggedEvent("u", "i", T0 + k, offset=k + 1) for k in range(4)]) == 4
    new_log: list[LoggedEvent] = []  # the log began again at offset 1
    first.follow_restarted_log(lambda: len(new_log))
    new_log += [LoggedEvent("u", "i", T0 + 10 + k, offset=k + 1) for k in range(2)]
    assert first.apply(new_log) == 2
    second.follow_restarted_log(lambda: len(new_log))  # the other replica sees the same reset later
    assert second.offset() == 2 and second.apply(new_log) == 0  # it does not rewind: nothing counts twice
    assert second.user_rows(["u"], T0 + 20)["counts"].tolist() == [[6, 6]]


def test_a_shared_store_is_filled_once_however_many_replicas_start(ml_like_spec, ml_like, redis_url, redis_prefix):
    stores = [FeatureStore.shared(ml_like_spec, f"{redis_url}?prefix={redis_prefix}") for _ in range(3)]
    filled: list[bool] = []
    threads = [threading.Thread(target=lambda s=store: filled.append(s.bootstrap_once(ml_like))) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(filled) == [False, False, True]
    reference = FeatureStore.embedded(ml_like_spec)
    reference.load_static(ml_like)
    reference.replay(ml_like)
    _assert_same_features(stores[2], reference, ml_like, float(ml_like.events.column("timestamp").to_numpy().max()) + 1)


def test_a_fill_that_failed_half_way_is_redone_on_a_cleared_store(ml_like_spec, ml_like, redis_url, redis_prefix):
    store = FeatureStore.shared(ml_like_spec, f"{redis_url}?prefix={redis_prefix}")

    def dies_half_way() -> None:
        store.replay(ml_like)
        raise RuntimeError("killed while filling")

    with pytest.raises(RuntimeError, match="killed"):
        store.backend.run_once("bootstrap", dies_half_way, 5.0)
    assert store.bootstrap_once(ml_like) is True  # the lease was given back, and the half-done state cleared
    reference = FeatureStore.embedded(ml_like_spec)
    reference.load_static(ml_like)
    reference.replay(ml_like)
    _assert_same_features(store, reference, ml_like, float(ml_like.events.column("timestamp").to_numpy().max()) + 1)
