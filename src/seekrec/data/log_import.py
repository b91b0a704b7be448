"""Generic event logs (CSV or Parquet, one row per interaction) -> ``InteractionData``.

For data that is not MovieLens: any log with a user, an item and a time column, with string or int
ids and unix-second or ISO 8601 timestamps. Errors name the file, the column and the row (the line, for
CSV).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from seekrec.data.errors import DataFormatError
from seekrec.data.schema import IdMap, InteractionData, build_events
from seekrec.data.tabular import (
    TextFormat,
    align_rows,
    first_duplicate,
    first_true,
    fit_and_encode,
    is_number,
    line_of_row,
    locate_bad_line,
)
from seekrec.io import sha256_file

logger = logging.getLogger(__name__)

EVENT_LOG_FORMATS = ("csv", "parquet")
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_CANONICAL_INT = r"^-?(0|[1-9][0-9]*)$"  # ids like "007" stay strings so "7" and "007" never merge


@dataclass(frozen=True)
class EventLogColumns:
    """Which columns of an event log hold what; the optional ones are absent when ``None``."""

    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    value_col: str | None = None
    event_type_col: str | None = None


def load_event_log(
    path: str | Path,
    columns: EventLogColumns = EventLogColumns(),
    items_path: str | Path | None = None,
    *,
    file_format: str | None = None,
    event_type: str = "interaction",
    min_value: float | None = None,
    delimiter: str | None = None,
) -> InteractionData:
    """Load any CSV or Parquet event log (one row per interaction) in file order; ``columns`` names its columns.

    Raw ids may be ints or strings; timestamps unix seconds (int or float) or ISO 8601 datetimes
    (naive ones are taken as UTC). Without ``value_col`` every value is 1.0; ``min_value`` keeps rows
    with value >= it. ``items_path`` may add ``title``, ``genres`` and ``year`` per item. CSV files need
    a header line; ``delimiter`` defaults to a tab for ``.tsv`` files and a comma otherwise.
    """
    path = Path(path)
    user_col, item_col, time_col = columns.user_col, columns.item_col, columns.time_col
    value_col, event_type_col = columns.value_col, columns.event_type_col
    kind = _format_of(path, file_format)
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    wanted = [c for c in (user_col, item_col, time_col, value_col, event_type_col) if c is not None]
    log = _LogFile.open(path, kind, wanted, delimiter)
    users_raw = log.ids(user_col)
    items_raw = log.ids(item_col)
    timestamps = log.timestamps(time_col)
    values = log.values(value_col) if value_col else np.ones(log.table.num_rows, dtype=np.float64)
    types = log.strings(event_type_col) if event_type_col else None
    options: dict[str, object] = {"format": kind, "user_col": user_col, "item_col": item_col, "time_col": time_col,
                                  "value_col": value_col, "event_type_col": event_type_col, "min_value": min_value}
    if min_value is not None:
        if value_col is None:
            raise ValueError("min_value needs value_col: name the column that holds the value to threshold")
        keep = values >= min_value
        if not keep.any():
            raise ValueError(f"min_value={min_value} keeps none of the {len(values)} events in {path}")
        users_raw, items_raw, timestamps, values = (a[keep] for a in (users_raw, items_raw, timestamps, values))
        types = None if types is None else types[keep]
    (user_ids, user_codes), (item_ids, item_codes) = fit_and_encode(users_raw), fit_and_encode(items_raw)
    events = build_events(user_codes, item_codes, timestamps, values, event_type if types is None else types.tolist())
    source_files = {path.name: sha256_file(path)}
    if items_path is None:
        n = len(item_ids)
        items = pa.table({"item_id": pa.array(np.arange(1, n + 1)), "title": pa.array([""] * n),
                          "genres": pa.array([[]] * n, pa.list_(pa.string())), "year": pa.nulls(n, pa.int32())})
    else:
        items_path = Path(items_path)
        items_kind = _SUFFIX_FORMATS.get(items_path.suffix.lower(), kind)
        items, dropped, missing = _items_table(items_path, items_kind, item_col, item_ids, delimiter)
        options.update(items_without_events=dropped, items_missing_metadata=missing)
        source_files[items_path.name] = sha256_file(items_path)
    users = pa.table({"user_id": pa.array(np.arange(1, len(user_ids) + 1, dtype=np.int64))})
    logger.info("read %d events, %d users, %d items from %s", events.num_rows, len(user_ids), len(item_ids), path)
    return InteractionData(events, items, users, user_ids, item_ids, source=kind,
                           source_files=source_files, options=options)


@dataclass
class _LogFile:
    """A parsed log and how to point at one of its rows in an error message."""

    path: Path
    table: pa.Table
    data: bytes | None  # raw CSV bytes, to turn a row into a line number; None for Parquet

    @classmethod
    def open(cls, path: Path, kind: str, wanted: list[str], delimiter: str) -> _LogFile:
        if not path.is_file():
            raise DataFormatError(path, "not found: pass the path of an existing event log file")
        table, data = (_read_csv(path, wanted, delimiter) if kind == "csv" else (_read_parquet(path, wanted), None))
        if table.num_rows == 0:
            raise DataFormatError(path, "has no rows")
        return cls(path, table, data)

    def error(self, column: str, row: int, problem: str) -> DataFormatError:
        if self.data is None:
            return DataFormatError(self.path, f"row {row + 1}, column {column!r}: {problem}")
        return DataFormatError(self.path, f"column {column!r}: {problem}", line_of_row(self.data, row, 1))

    def column(self, name: str) -> pa.Array:
        arr = self.table.column(name).combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if arr.null_count:
            raise self.error(name, first_true(arr.is_null()), "value is missing")
        return arr

    def ids(self, name: str) -> np.ndarray:
        """Raw ids as int64 or str; CSV columns holding only canonical integers become ints."""
        arr = self.column(name)
        if pa.types.is_integer(arr.type):
            return arr.to_numpy().astype(np.int64)
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            raise DataFormatError(self.path, f"column {name!r} has type {arr.type}; ids must be integers or strings")
        if self.data is not None and pc.all(pc.match_substring_regex(arr, _CANONICAL_INT)).as_py():
            try:
                return arr.cast(pa.int64()).to_numpy()
            except pa.ArrowInvalid:
                logger.info("ids in column %r of %s overflow int64; keeping them as strings", name, self.path)
        return arr.to_numpy(zero_copy_only=False).astype(np.str_)

    def timestamps(self, name: str) -> np.ndarray:
        arr = self.column(name)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            if pc.all(pc.match_substring_regex(arr, _CANONICAL_INT)).as_py():
                return arr.cast(pa.int64()).to_numpy()
            return self._parse_times(name, arr.to_numpy(zero_copy_only=False).astype(np.str_))
        if pa.types.is_integer(arr.type):
            return arr.to_numpy().astype(np.int64)
        if pa.types.is_floating(arr.type):
            return np.floor(self._finite(name, arr.to_numpy())).astype(np.int64)
        if pa.types.is_timestamp(arr.type):
            return pc.cast(arr, pa.timestamp("s", tz=arr.type.tz), safe=False).cast(pa.int64()).to_numpy()
        if pa.types.is_date(arr.type):
            return arr.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
        raise DataFormatError(self.path, f"column {name!r} has type {arr.type}; timestamps must be unix seconds "
                              "or ISO 8601 datetimes")

    def values(self, name: str) -> np.ndarray:
        arr = self.column(name)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            texts = arr.to_numpy(zero_copy_only=False)
            bad = np.array([not is_number(t) for t in texts])
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise self.error(name, row, f"{str(texts[row])!r} is not a number")
            arr = arr.cast(pa.float64())
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            raise DataFormatError(self.path, f"column {name!r} has type {arr.type}; values must be numbers")
        return self._finite(name, arr.to_numpy().astype(np.float64))

    def strings(self, name: str) -> np.ndarray:
        return self.column(name).cast(pa.string()).to_numpy(zero_copy_only=False)

    def _finite(self, name: str, values: np.ndarray) -> np.ndarray:
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise self.error(name, row, f"{values[row]} is not a finite number")
        return values

    def _parse_times(self, name: str, texts: np.ndarray) -> np.ndarray:
        """Unix seconds from text that holds numbers or ISO 8601 datetimes; each distinct value parsed once."""
        uniq, inverse = np.unique(texts, return_inverse=True)
        seconds = np.zeros(len(uniq), dtype=np.int64)
        bad = np.zeros(len(uniq), dtype=bool)
        for k, text in enumerate(uniq.tolist()):
            if is_number(text):
                value = float(text)
                bad[k] = not np.isfinite(value)
                seconds[k] = int(np.floor(value)) if not bad[k] else 0
                continue
            try:
                stamp = dt.datetime.fromisoformat(text.strip())
            except ValueError:
                bad[k] = True
                continue
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.timezone.utc)
            seconds[k] = int(np.floor(stamp.timestamp()))
        if bad.any():
            row = int(np.flatnonzero(bad[inverse])[0])
            raise self.error(name, row, f"{str(texts[row])!r} is neither unix seconds nor an ISO 8601 datetime")
        return seconds[inverse]


def _items_table(path: Path, kind: str, item_col: str, item_ids: IdMap, delimiter: str) -> tuple[pa.Table, int, int]:
    """Items side table aligned to ``item_ids``: optional ``title``, ``genres`` ("|"-separated or list), ``year``."""
    if not path.is_file():
        raise DataFormatError(path, "not found: pass the path of an existing items file")
    names = _column_names(path, kind, delimiter)
    wanted = [item_col] + [c for c in ("title", "genres", "year") if c in names and c != item_col]
    log = _LogFile.open(path, kind, wanted, delimiter)
    raw = log.ids(item_col)
    if raw.dtype.kind == "i" and item_ids.raw.dtype.kind == "U":
        raw = raw.astype(np.str_)  # the log's ids are text, so compare these as the text they were written as
    elif raw.dtype.kind != item_ids.raw.dtype.kind:
        raise DataFormatError(path, f"column {item_col!r} holds strings but the event log's item ids are integers")
    dup = first_duplicate(raw)
    if dup is not None:
        raise log.error(item_col, dup, f"item id {raw[dup].item()!r} appears twice")
    cols = {c: log.table.column(c).combine_chunks() for c in wanted[1:]}
    title = cols["title"].cast(pa.string()) if "title" in cols else pa.nulls(len(raw), pa.string())
    genres = cols.get("genres", pa.nulls(len(raw), pa.list_(pa.string())))
    if pa.types.is_string(genres.type) or pa.types.is_large_string(genres.type):
        genres = pc.split_pattern(genres.cast(pa.string()), "|")
    try:
        year = cols["year"].cast(pa.int32()) if "year" in cols else pa.nulls(len(raw), pa.int32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataFormatError(path, f"column 'year' must hold integers ({exc})") from exc
    meta = pa.table({"title": title, "genres": genres.cast(pa.list_(pa.string())), "year": year})
    aligned, dropped, missing = align_rows(item_ids, raw, meta)
    n = len(item_ids)
    items = pa.table({
        "item_id": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "title": pc.fill_null(aligned.column("title"), ""),
        "genres": pc.fill_null(aligned.column("genres"), pa.scalar([], pa.list_(pa.string()))),
        "year": aligned.column("year"),
    })
    return items, dropped, missing


def _format_of(path: Path, file_format: str | None) -> str:
    kind = file_format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if kind not in EVENT_LOG_FORMATS:
        raise ValueError(f"cannot tell the format of {path}: pass file_format as one of {EVENT_LOG_FORMATS}")
    return kind


def _column_names(path: Path, kind: str, delimiter: str) -> list[str]:
    if kind == "parquet":
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataFormatError(path, f"is not a readable Parquet file ({exc})") from exc
    with open(path, "rb") as fh:
        first = fh.readline()
    try:
        return next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")], delimiter=delimiter), [])
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"header is not valid UTF-8 ({exc.reason}); save the file as UTF-8", 1) from exc


def _require_columns(path: Path, names: list[str], wanted: list[str], line: int | None) -> None:
    for name in wanted:
        if name not in names:
            raise DataFormatError(path, f"has no column {name!r} (its columns: {', '.join(names)}); "
                                  "name the right one with --user-col, --item-col, --time-col, --value-col or "
                                  "--event-type-col (seekrec data prepare; the *_col arguments in Python)", line)


def _read_csv(path: Path, wanted: list[str], delimiter: str) -> tuple[pa.Table, bytes]:
    data = path.read_bytes()
    if not data or data.isspace():
        raise DataFormatError(path, "is empty")
    names = _column_names(path, "csv", delimiter)
    _require_columns(path, names, wanted, 1)
    # Everything is read as text and typed per column afterwards: pyarrow infers types from the first
    # block only and would fail on a later block with a confusing message.
    fmt = TextFormat(delimiter, tuple((n, pa.string()) for n in names), header=True, quoting=True)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(encoding="utf-8"),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=dict(fmt.columns), include_columns=wanted,
                                                 null_values=[""], strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise locate_bad_line(path, data, fmt, "utf-8", delimiter, exc) from exc
    return table, data


def _read_parquet(path: Path, wanted: list[str]) -> pa.Table:
    _require_columns(path, _column_names(path, "parquet", ","), wanted, None)
    try:
        return pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(path, f"is not a readable Parquet file ({exc})") from exc


