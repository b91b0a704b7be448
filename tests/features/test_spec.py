import json
import time

import numpy as np
import pytest
import torch

from seekrec.data.schema import InteractionData
from seekrec.data.splits import load_split
from seekrec.features.behaviour import SequenceConfig
from seekrec.features.columns import BucketizedConfig, CategoricalConfig
from seekrec.features.examples import OfflineRows, build_examples
from seekrec.features.history import Events
from seekrec.features.spec import ARRAYS_FILE, SPEC_FILE, FeatureSpec, FeatureSpecConfig, FeatureSpecError
from seekrec.features.text import TextConfig
from tests.features.helpers import assert_batches_equal, movielens_like, small_config


@pytest.fixture(scope="module")
def examples(ml_like_spec, ml_like, ml_like_train):
    return build_examples(ml_like_spec, ml_like, ml_like_train)


def test_schema_describes_the_batches_exactly(ml_like_spec, examples):
    for side, batch in (("user", examples.user), ("item", examples.item)):
        schema = ml_like_spec.schema(side)
        assert [name for name, _ in schema.categorical] == list(batch.categorical)
        for name, cardinality in schema.categorical:
            ids = batch.categorical[name]
            assert ids.dtype == torch.long and ids.min() >= 0 and ids.max() < cardinality
        assert batch.dense.shape == (len(examples), len(schema.dense)) and batch.dense.dtype == torch.float32
        assert schema.n_items == ml_like_spec.n_items
    user, item = ml_like_spec.schema("user"), ml_like_spec.schema("item")
    assert user.dense == ("age", "counts_1d", "counts_7d") and user.sequence_len == 6 and user.text_dim == 0
    assert examples.user.sequence.shape == examples.user.recency.shape == (len(examples), 6)
    assert examples.user.text is None and examples.item.sequence is None
    assert item.text_dim == 8 and examples.item.text.shape == (len(examples), 8)
    assert dict(item.categorical)["genres"] == 6 + 2  # six genres + missing + OOV


def test_default_spec_drops_columns_the_data_lacks(sim_data_dir):
    data = InteractionData.read(sim_data_dir)
    config = FeatureSpecConfig.default(data)
    assert [c.name for c in config.user] == ["age", "history", "counts"]  # no gender, occupation or zip
    assert [c.name for c in config.item] == ["genres", "year", "text", "counts"]
    spec = config.fit(data, Events.from_data(data))
    assert spec.schema("item").text_dim == 32


def test_config_json_round_trip_and_errors():
    config = small_config()
    assert FeatureSpecConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="known kinds"):
        FeatureSpecConfig.from_json({"user": [{"kind": "embedding", "name": "x"}]})
    with pytest.raises(ValueError, match="unknown keys"):
        FeatureSpecConfig.from_json({"users": []})
    with pytest.raises(ValueError, match="unexpected keyword"):
        FeatureSpecConfig.from_json({"user": [{"kind": "categorical", "name": "x", "buckets": 3}]})


@pytest.mark.parametrize("kwargs, message", [
    ({"item": (SequenceConfig(),)}, "user side"),
    ({"user": (TextConfig(),)}, "item side"),
    ({"user": (CategoricalConfig("a"), BucketizedConfig("a"))}, "repeated column names"),
    ({"user": (SequenceConfig("a"), SequenceConfig("b"))}, "one sequence"),
])
def test_spec_configs_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureSpecConfig(**kwargs)


def test_save_load_round_trip_keeps_version_and_features(ml_like_spec, ml_like, ml_like_train, tmp_path):
    ml_like_spec.save(tmp_path)
    loaded = FeatureSpec.load(tmp_path)
    assert loaded.version == ml_like_spec.version and len(loaded.version) == 64
    for side in ("user", "item"):
        assert loaded.schema(side) == ml_like_spec.schema(side)
    rows = OfflineRows(ml_like_spec, ml_like, ml_like_train)
    ids, times = np.array([1, 2, 3, 0]), np.full(4, ml_like_train.timestamps.max() + 1)
    for side in ("user", "item"):
        assert_batches_equal(loaded.transform(side, rows.rows(side, ids, times)),
                             ml_like_spec.transform(side, rows.rows(side, ids, times)))
    # cold start text after loading: the vectorizer and SVD were restored, not only the table
    text = loaded.column("item", "text")
    np.testing.assert_array_equal(text.embed_texts(["Star War Action"]),
                                  ml_like_spec.column("item", "text").embed_texts(["Star War Action"]))


def test_load_refuses_a_spec_whose_content_does_not_match_its_version(ml_like_spec, ml_like, tmp_path):
    ml_like_spec.save(tmp_path / "a")
    payload = json.loads((tmp_path / "a" / SPEC_FILE).read_text())
    age = next(c for c in payload["columns"]["user"] if c["config"]["name"] == "age")
    age["state"]["mean"] += 1.0
    (tmp_path / "a" / SPEC_FILE).write_text(json.dumps(payload))
    with pytest.raises(FeatureSpecError, match="do not edit saved specs"):
        FeatureSpec.load(tmp_path / "a")

    # the arrays of another fit (same shapes, different numbers) beside this JSON
    ml_like_spec.save(tmp_path / "b")
    other = small_config().fit(movielens_like(seed=1), Events.from_data(movielens_like(seed=1)))
    other.save(tmp_path / "c")
    (tmp_path / "b" / ARRAYS_FILE).write_bytes((tmp_path / "c" / ARRAYS_FILE).read_bytes())
    with pytest.raises(FeatureSpecError, match="version"):
        FeatureSpec.load(tmp_path / "b")

    with pytest.raises(FeatureSpecError, match="not found"):
        FeatureSpec.load(tmp_path / "missing")
    (tmp_path / "c" / SPEC_FILE).write_text("{not json")
    with pytest.raises(FeatureSpecError, match="not valid JSON"):
        FeatureSpec.load(tmp_path / "c")


def test_version_is_reproducible_and_changes_with_the_config(ml_like_spec, ml_like, ml_like_train):
    assert small_config().fit(ml_like, ml_like_train).version == ml_like_spec.version
    assert small_config(sequence_len=7).fit(ml_like, ml_like_train).version != ml_like_spec.version


def test_offline_batch_equals_the_single_row_transform(ml_like_spec, ml_like, ml_like_train, examples):
    rows = OfflineRows(ml_like_spec, ml_like, ml_like_train)
    for e in np.random.default_rng(0).choice(len(examples), 25, replace=False).tolist():
        user, item, t = (int(x[e]) for x in (examples.users, examples.items, examples.timestamps))
        index = torch.tensor([e])
        assert_batches_equal(rows.features("user", np.array([user]), np.array([t])), examples.user.index(index))
        assert_batches_equal(rows.features("item", np.array([item]), np.array([t])), examples.item.index(index))


def test_examples_see_only_strictly_earlier_events(ml_like_spec, ml_like, ml_like_train, examples):
    events = Events.from_sequences(ml_like_train)
    length = ml_like_spec.schema("user").sequence_len
    for e in range(len(examples)):
        user, t = int(examples.users[e]), int(examples.timestamps[e])
        mine = (events.users == user) & (events.timestamps < t)
        order = np.argsort(events.timestamps[mine], kind="stable")
        want = events.items[mine][order][-length:].tolist()
        got = examples.user.sequence[e].tolist()
        assert got == [0] * (length - len(want)) + want
        week = (events.users == user) & (events.timestamps < t) & (events.timestamps >= t - 7 * 86_400)
        scale = ml_like_spec.column("user", "counts").scales[1]
        assert examples.user.dense[e, 2].item() == pytest.approx(np.log1p(week.sum()) / scale, rel=1e-6)


def test_rewriting_the_future_changes_no_earlier_example(ml_like_spec, ml_like):
    events = Events.from_data(ml_like)
    cutoff = int(np.quantile(events.timestamps, 0.5))
    future = events.timestamps >= cutoff
    rng = np.random.default_rng(3)
    rewritten = Events(np.where(future, rng.integers(1, ml_like.n_users + 1, len(events)), events.users),
                       np.where(future, rng.integers(1, ml_like.n_items + 1, len(events)), events.items),
                       events.timestamps)
    past = torch.from_numpy(np.flatnonzero(~future))
    a = build_examples(ml_like_spec, ml_like, events)
    b = build_examples(ml_like_spec, ml_like, events, history=rewritten)
    assert_batches_equal(a.user.index(past), b.user.index(past))
    assert_batches_equal(a.item.index(past), b.item.index(past))


def test_missing_attributes_and_unknown_ids_give_zero_features(ml_like_spec, ml_like, ml_like_train):
    rows = OfflineRows(ml_like_spec, ml_like, ml_like_train)
    t = np.full(2, int(ml_like_train.timestamps.max()) + 1)
    user = rows.features("user", np.array([0, ml_like.n_users + 7]), t)
    item = rows.features("item", np.array([0, ml_like.n_items + 7]), t)
    for batch in (user, item):
        assert all(not ids.any() for ids in batch.categorical.values())
        assert not batch.dense.any()
    assert not user.sequence.any() and not user.recency.any() and not item.text.any()
    ages = ml_like.users.column("age").to_pylist()
    no_age = 1 + ages.index(None)
    got = rows.features("user", np.array([no_age]), t[:1])
    assert got.categorical["age"].item() == 0 and got.dense[0, 0].item() == 0.0


def test_offline_rows_refuse_a_dataset_of_another_catalog(ml_like_spec):
    other = movielens_like(n_items=20, seed=2)
    with pytest.raises(ValueError, match="another item catalog"):
        OfflineRows(ml_like_spec, other, Events.from_data(other))


def test_movielens_100k_default_spec_fits_and_builds_in_seconds(ml100k_raw, tmp_path):
    from seekrec.data.prepare import prepare_dataset

    prepare_dataset("ml-100k", ml100k_raw, tmp_path / "ml-100k")
    data, split = load_split(tmp_path / "ml-100k")
    start = time.perf_counter()
    spec = FeatureSpecConfig.default(data).fit(data, split.train)
    fitted = time.perf_counter()
    examples = build_examples(spec, data, split.train)
    built = time.perf_counter()
    assert len(examples) == split.train.n_events
    assert [n for n, _ in spec.schema("user").categorical] == ["gender", "occupation", "age", "zip3"]
    assert dict(spec.schema("item").categorical)["genres"] == 19 + 2
    assert fitted - start < 20 and built - fitted < 30, (fitted - start, built - fitted)  # ~1 s each on 2 cores
