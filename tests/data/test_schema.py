import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekrec.data.errors import DataFormatError
from seekrec.data.schema import IdMap, InteractionData, read_manifest
from tests.conftest import tiny_data


@given(st.lists(st.integers(-10**9, 10**9), min_size=1, max_size=50))
def test_idmap_round_trip_ints(raw):
    idmap = IdMap.fit(raw)
    ids = idmap.encode(raw)
    assert ids.min() >= 1 and ids.max() == len(set(raw))
    assert list(idmap.decode(ids)) == raw
    assert IdMap.from_json(idmap.to_json()).encode(raw).tolist() == ids.tolist()


def test_idmap_strings_and_errors():
    idmap = IdMap.fit(["b", "a", "b"])
    assert idmap.encode(["a", "b"]).tolist() == [1, 2]
    assert IdMap.from_json(idmap.to_json()).decode([2]).tolist() == ["b"]
    with pytest.raises(KeyError, match="'c'"):
        idmap.encode(["c"])
    with pytest.raises(KeyError, match="outside"):
        idmap.decode([0])


def test_write_read_round_trip(tmp_path):
    data = tiny_data([10, 10, 20], [5, 6, 5], [1, 2, 3])
    manifest = data.write(tmp_path)
    assert manifest["tables"]["events"]["rows"] == 3 and manifest["n_items"] == 2
    back = InteractionData.read(tmp_path)
    assert back.events.equals(data.events) and back.items.equals(data.items)
    assert back.user_ids.decode([1, 2]).tolist() == [10, 20]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not survive a write"


def test_read_refuses_changed_table(tmp_path):
    tiny_data([1, 2], [1, 1], [1, 2]).write(tmp_path)
    (tmp_path / "events.parquet").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="checksum"):
        InteractionData.read(tmp_path)


def test_missing_or_bad_manifest(tmp_path):
    with pytest.raises(DataFormatError, match="not a prepared dataset"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_schema_is_checked():
    data = tiny_data([1], [1], [1])
    with pytest.raises(ValueError, match="missing column 'title'"):
        InteractionData(data.events, data.items.drop(["title"]), data.users, data.user_ids, data.item_ids, "x")
    with pytest.raises(ValueError, match="type"):
        bad = data.events.set_column(2, "timestamp", pa.array(["x"], pa.string()))
        InteractionData(bad, data.items, data.users, data.user_ids, data.item_ids, "x")
    assert np.all(data.interactions()[0] == 1)
