"""The shared text reader and id helpers: fast paths checked against plain Python references."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.data import tabular
from seekrec.data.errors import DataFormatError
from seekrec.data.schema import IdMap
from seekrec.data.tabular import TextFormat, align_rows, first_duplicate, fit_and_encode, line_of_row, read_text_table


def test_line_of_row_skips_blank_lines_like_pyarrow():
    data = b"h\n\na\n\r\nb\n"
    assert [line_of_row(data, k, 1) for k in range(2)] == [3, 5]


NAMES = st.text("ab: |é", max_size=8).filter(lambda t: "::" not in t and not t.endswith(":") and not t.startswith(":"))
ROWS = st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), NAMES, st.floats(-1e9, 1e9)), min_size=1, max_size=20)
DAT = TextFormat("::", (("id", pa.int64()), ("name", pa.string()), ("x", pa.float64())), encodings=("latin-1",))


@settings(max_examples=50, deadline=None)
@given(ROWS)
def test_fast_reader_matches_a_plain_python_parse(tmp_path_factory, rows):
    """The pyarrow path (with "::" swapped for one byte) against the obvious line-by-line split."""
    path = tmp_path_factory.mktemp("dat") / "t.dat"
    path.write_bytes("".join(f"{i}::{name}::{x!r}\n" for i, name, x in rows).encode("latin-1"))
    expected = []
    for line in path.read_bytes().decode("latin-1").splitlines():
        i, name, x = line.split("::")
        expected.append({"id": int(i), "name": name, "x": float(x)})
    assert read_text_table(path, DAT).to_pylist() == expected


@settings(max_examples=100, deadline=None)
@given(st.text("0123456789 +-.eEnaif_x", min_size=1, max_size=6),
       st.sampled_from([pa.int64(), pa.int8(), pa.float64()]))
def test_slow_path_always_finds_the_line_pyarrow_rejected(tmp_path_factory, value, typ):
    """Whatever pyarrow refuses, the line-by-line re-check must agree and point at line 2."""
    path = tmp_path_factory.mktemp("num") / "t.tsv"
    path.write_text(f"1\t1\n2\t{value}\n")
    fmt = TextFormat("\t", (("id", pa.int64()), ("v", typ)))
    try:
        read_text_table(path, fmt)
    except DataFormatError as error:
        assert error.line == 2, str(error)


@given(st.one_of(
    st.lists(st.integers(0, 3000), min_size=1, max_size=60),
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=60),  # negative or huge: the general path
    st.lists(st.text("abc", max_size=3), min_size=1, max_size=30),
))
def test_fit_and_encode_equals_idmap(values):
    id_map, codes = fit_and_encode(np.asarray(values))
    reference = IdMap.fit(values)
    assert id_map.raw.tolist() == reference.raw.tolist() and id_map.raw.dtype == reference.raw.dtype
    assert codes.tolist() == reference.encode(values).tolist() and codes.dtype == np.int64


def test_first_duplicate():
    assert first_duplicate(np.array([5, 3, 9])) is None
    assert first_duplicate(np.array([5, 3, 5, 3])) == 2


def test_align_rows_reorders_drops_and_fills():
    id_map = IdMap.fit([10, 20, 30])
    table = pa.table({"name": ["thirty", "forty", "ten"]})
    aligned, dropped, missing = align_rows(id_map, np.array([30, 40, 10]), table)
    assert aligned.column("name").to_pylist() == ["ten", None, "thirty"] and (dropped, missing) == (1, 1)
    empty, dropped, missing = align_rows(id_map, np.array([], dtype=np.int64), table.slice(0, 0))
    assert empty.column("name").to_pylist() == [None] * 3 and (dropped, missing) == (0, 3)


@pytest.mark.parametrize("content, line", [(b"\x1f1::2\n", 1), (b"   \n\n", None)])
def test_reader_rejects_control_bytes_and_blank_files(tmp_path, content, line):
    path = tmp_path / "t.dat"
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as info:
        read_text_table(path, TextFormat("::", (("a", pa.int64()), ("b", pa.int64()))))
    assert info.value.line == line


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.data(), st.integers(1, 48), st.booleans(), st.sets(st.integers(0, 40), max_size=5))
def test_bad_line_is_found_in_any_block(tmp_path_factory, n, data, block, header, blanks):
    """Block-wise re-parsing must report the same line as a whole-file scan, whatever the block size."""
    bad = data.draw(st.integers(0, n - 1))
    lines = [f"{k}\t{k}" if k != bad else f"{k}\tx" for k in range(n)]
    for k in sorted(blanks, reverse=True):
        lines.insert(min(k, len(lines)), "")
    lines = (["a\tb"] if header else []) + lines
    path = tmp_path_factory.mktemp("blocks") / "t.tsv"
    path.write_text("\n".join(lines) + "\n")
    with mock.patch.object(tabular, "_BLOCK", block), pytest.raises(DataFormatError) as info:
        read_text_table(path, TextFormat("\t", (("a", pa.int64()), ("b", pa.int64())), header=header))
    assert info.value.line == lines.index(f"{bad}\tx") + 1


def test_line_of_row_without_blank_lines_is_arithmetic():
    assert line_of_row(b"h\na\nb\nc", 2, 1) == 4 and line_of_row(b"a\r\nb\r\n", 1) == 2
