"""Generic CSV / Parquet event logs: id kinds, timestamp formats, items files and every error path."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seekrec.data.errors import DataFormatError
from seekrec.data.log_import import EventLogColumns, load_event_log


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def unix(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp())


def test_csv_with_string_ids_and_iso_times(tmp_path):
    log = write(tmp_path / "log.csv", "user,item,when,kind,score\n"
                "bob,x9,2024-01-02T03:04:05Z,click,1\n"
                "alice,x1,2024-01-02 03:04:05,buy,2.5\n"
                "bob,x1,2024-01-02T05:04:05+02:00,click,0\n")
    data = load_event_log(log, EventLogColumns("user", "item", "when", value_col="score", event_type_col="kind"))
    users, items, ts = data.interactions()
    assert data.user_ids.decode(users).tolist() == ["bob", "alice", "bob"]
    assert data.item_ids.decode(items).tolist() == ["x9", "x1", "x1"]
    assert ts.tolist() == [unix("2024-01-02T03:04:05")] * 3  # "Z", naive (UTC) and +02:00 agree
    assert data.events.column("event_type").to_pylist() == ["click", "buy", "click"]
    assert data.events.column("value").to_pylist() == [1.0, 2.5, 0.0]
    assert data.items.column("title").to_pylist() == ["", ""] and data.source == "csv"


def test_csv_int_ids_unix_seconds_and_leading_zeros(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n10,007,5\n2,7,5\n10,7,4.9\n")
    data = load_event_log(log)
    assert data.user_ids.raw.tolist() == [2, 10]  # canonical ints become ints
    assert data.item_ids.raw.tolist() == ["007", "7"]  # "007" keeps items 007 and 7 apart
    assert data.interactions()[2].tolist() == [5, 5, 4]  # float seconds are floored
    assert data.events.column("value").to_pylist() == [1.0, 1.0, 1.0]
    assert data.events.column("event_type").to_pylist() == ["interaction"] * 3


def test_parquet_with_timestamp_column_and_items(tmp_path):
    stamps = pa.array([1_700_000_000_500, 1_600_000_000_000], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user_id": [5, 6], "item_id": [30, 40], "timestamp": stamps}), tmp_path / "log.parquet")
    pq.write_table(pa.table({"item_id": [40, 99, 30], "title": ["Forty", "Unused", None],
                             "genres": [["a", "b"], [], None], "year": [2001, None, 1999]}), tmp_path / "items.parquet")
    data = load_event_log(tmp_path / "log.parquet", items_path=tmp_path / "items.parquet")
    assert data.interactions()[2].tolist() == [1_700_000_000, 1_600_000_000]
    assert data.items.to_pylist() == [
        {"item_id": 1, "title": "", "genres": [], "year": 1999},
        {"item_id": 2, "title": "Forty", "genres": ["a", "b"], "year": 2001},
    ]
    assert data.options["items_without_events"] == 1 and data.options["items_missing_metadata"] == 0
    assert set(data.source_files) == {"log.parquet", "items.parquet"}


def test_csv_items_file_and_tsv_and_min_value(tmp_path):
    log = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\tvalue\n1\ta\t1\t5\n1\tb\t2\t1\n2\tc\t3\t4\n")
    items = write(tmp_path / "items.tsv", "item_id\ttitle\tgenres\n" "a\tAlpha\tx|y\n" "b\tBeta\tz\n")
    data = load_event_log(log, EventLogColumns(value_col="value"), items_path=items, min_value=4)
    assert data.item_ids.raw.tolist() == ["a", "c"] and data.events.column("value").to_pylist() == [5.0, 4.0]
    assert data.items.column("title").to_pylist() == ["Alpha", ""]
    assert data.items.column("genres").to_pylist() == [["x", "y"], []]
    assert data.options["items_missing_metadata"] == 1 and data.options["items_without_events"] == 1
    with pytest.raises(ValueError, match="needs value_col"):
        load_event_log(log, min_value=1)


CSV_ERRORS = [
    ("user,item_id,timestamp\n1,2,3\n", 1, "has no column 'user_id' (its columns: user, item_id, timestamp)"),
    ("user_id,item_id,timestamp\n1,2,3\n,2,4\n", 3, "column 'user_id': value is missing"),
    ("user_id,item_id,timestamp\n1,2,3\n\n1,2,soon\n", 4, "'soon' is neither unix seconds nor an ISO 8601"),
    ("user_id,item_id,timestamp,value\n1,2,3,1\n1,2,3,lots\n", 3, "column 'value': 'lots' is not a number"),
    ("user_id,item_id,timestamp,value\n1,2,3,nan\n", 2, "column 'value': nan is not a finite number"),
    ("user_id,item_id,timestamp\n1,2,3\n1,2\n", 3, "expected 3 fields separated by ',', found 2"),
    (b"user_id,item_id,timestamp\n1,2,3\n\xff\xfe,2,3\n", 3, "is not valid utf-8: byte 0xff"),
    ("", None, "is empty"),
    ("user_id,item_id,timestamp\n", None, "has no rows"),
]


@pytest.mark.parametrize("content, line, fragment", CSV_ERRORS)
def test_csv_errors_name_file_column_and_line(tmp_path, content, line, fragment):
    log = write(tmp_path / "log.csv", content)
    with pytest.raises(DataFormatError) as info:
        load_event_log(log, EventLogColumns(value_col="value" if "value" in str(content) else None))
    assert info.value.path == log and info.value.line == line and fragment in str(info.value)


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", None], "item_id": [1, 2], "timestamp": [1, 2]}), path)
    with pytest.raises(DataFormatError, match=r"log.parquet: row 2, column 'user_id': value is missing"):
        load_event_log(path)
    pq.write_table(pa.table({"user_id": [1.5, 2.0], "item_id": [1, 2], "timestamp": [1, 2]}), path)
    with pytest.raises(DataFormatError, match="has type double; ids must be integers or strings"):
        load_event_log(path)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "timestamp": [1.0, float("inf")]}), path)
    with pytest.raises(DataFormatError, match="row 2, column 'timestamp': inf is not a finite number"):
        load_event_log(path)
    write(path, "not parquet")
    with pytest.raises(DataFormatError, match="not a readable Parquet file"):
        load_event_log(path)


def test_items_file_errors(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    items = write(tmp_path / "items.csv", "item_id,title\n2,Two\n2,Again\n")
    with pytest.raises(DataFormatError) as info:
        load_event_log(log, items_path=items)
    assert info.value.path == items and info.value.line == 3 and "item id 2 appears twice" in str(info.value)
    with pytest.raises(DataFormatError, match="not found"):
        load_event_log(log, items_path=tmp_path / "absent.csv")
    write(items, "item_id,title\nb2,Two\n")
    with pytest.raises(DataFormatError, match="holds strings but the event log's item ids are integers"):
        load_event_log(log, items_path=items)


def test_integer_looking_item_ids_match_a_string_id_log(tmp_path):
    log = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,007,3\n1,7,4\n")
    items = write(tmp_path / "items.csv", "item_id,title\n7,Seven\n")
    data = load_event_log(log, items_path=items)
    assert data.items.column("title").to_pylist() == ["", "Seven"]  # "007" has no row, "7" does


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        load_event_log(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="file_format"):
        load_event_log(write(tmp_path / "log.json", "{}"))
