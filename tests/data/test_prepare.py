"""prepare_dataset: raw -> prepared directory, read back identically; failures leave the output untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from seekrec.data import download as download_module
from seekrec.data import movielens
from seekrec.data.errors import DataFormatError
from seekrec.data.log_import import EventLogColumns
from seekrec.data.prepare import DATASET_NAMES, prepare_dataset
from seekrec.data.schema import InteractionData

ML1M = {
    "ratings.dat": "10::1::5::978300760\n10::2::3::978300760\n20::1::4::978300000\n",
    "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n",
    "users.dat": "10::F::1::10::48067\n20::M::56::16::70072\n",
}


def write_release(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="latin-1")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def assert_same(a: InteractionData, b: InteractionData) -> None:
    assert a.events.equals(b.events) and a.items.equals(b.items) and a.users.equals(b.users)
    assert a.user_ids.raw.tolist() == b.user_ids.raw.tolist() and a.item_ids.raw.tolist() == b.item_ids.raw.tolist()


def test_prepare_movielens_round_trip(tmp_path):
    write_release(tmp_path / "raw" / "ml-1m", ML1M)  # raw_dir may be the folder that holds the release
    manifest = prepare_dataset("ml-1m", tmp_path / "raw", tmp_path / "out", verify_counts=False, min_rating=4)
    assert manifest["source"] == "ml-1m" and manifest["tables"]["events"]["rows"] == 2
    assert manifest["options"]["min_rating"] == 4 and set(manifest["source_files"]) == set(ML1M)
    back = InteractionData.read(tmp_path / "out")
    assert_same(back, movielens.load_movielens("ml-1m", tmp_path / "raw" / "ml-1m", min_rating=4, verify_counts=False))
    assert back.items.column("title").to_pylist() == ["Toy Story"]


def test_prepare_event_log(tmp_path):
    log = tmp_path / "clicks.csv"
    log.write_text("uid,sku,ts,kind\nu1,s1,2024-05-01T00:00:00Z,view\nu2,s1,1714521600,buy\n")
    columns = EventLogColumns(user_col="uid", item_col="sku", time_col="ts", event_type_col="kind")
    manifest = prepare_dataset("csv", log, tmp_path / "out", columns=columns)
    back = InteractionData.read(tmp_path / "out")
    assert manifest["source"] == "csv" and back.interactions()[2].tolist() == [1714521600, 1714521600]
    assert back.user_ids.decode([1, 2]).tolist() == ["u1", "u2"]


def test_unknown_name_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError) as info:
        prepare_dataset("ml-2m", tmp_path, tmp_path / "out")
    assert all(name in str(info.value) for name in DATASET_NAMES) and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="MovieLens releases only"):
        prepare_dataset("csv", tmp_path / "x.csv", tmp_path / "out", download=True)


def test_download_when_files_are_absent(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in ML1M.items():
            zf.writestr(f"ml-1m/{name}", text)
    payload = buffer.getvalue()
    spec = dataclasses.replace(movielens.RELEASES["ml-1m"], md5=hashlib.md5(payload).hexdigest())
    monkeypatch.setitem(movielens.RELEASES, "ml-1m", spec)
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda url, timeout: type("R", (io.BytesIO,), {"headers": {}})(payload))
    manifest = prepare_dataset("ml-1m", tmp_path / "raw", tmp_path / "out", download=True, verify_counts=False)
    assert manifest["tables"]["events"]["rows"] == 3 and (tmp_path / "raw" / "ml-1m" / "users.dat").exists()
    # a second run finds the files and does not download again
    monkeypatch.setattr(download_module.urllib.request, "urlopen", lambda url, timeout: pytest.fail("downloaded"))
    prepare_dataset("ml-1m", tmp_path / "raw", tmp_path / "out2", download=True, verify_counts=False)


BROKEN = {
    "bad line": ("ratings.dat", "10::1::5::978300760\n10::2::five::978300760\n"),
    "missing file": ("users.dat", None),
    "empty ratings": ("ratings.dat", ""),
    "official counts": (None, None),
}


@pytest.mark.parametrize("case", BROKEN)
def test_failure_leaves_the_output_untouched(tmp_path, case):
    raw = write_release(tmp_path / "ml-1m", ML1M)
    out = tmp_path / "out"
    prepare_dataset("ml-1m", raw, out, verify_counts=False)
    before = snapshot(out)
    file_name, content = BROKEN[case]
    if file_name is not None and content is None:
        (raw / file_name).unlink()
    elif file_name is not None:
        (raw / file_name).write_text(content)
    verify = case == "official counts"  # the tiny files are far from ml-1m's official counts
    for target in (out, tmp_path / "fresh"):
        with pytest.raises(DataFormatError):
            prepare_dataset("ml-1m", raw, target, verify_counts=verify)
    assert snapshot(out) == before and not (tmp_path / "fresh").exists()


def test_failed_event_log_writes_nothing(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\n1,2,3\n1,2,later\n")
    with pytest.raises(DataFormatError, match="line 3"):
        prepare_dataset("csv", log, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_real_ml100k_prepare_and_read_back(ml100k_raw, tmp_path):
    manifest = prepare_dataset("ml-100k", ml100k_raw, tmp_path / "ml-100k")
    assert (manifest["n_users"], manifest["n_items"]) == (943, 1_682)
    assert manifest["tables"]["events"]["rows"] == 100_000 and manifest["source"] == "ml-100k"
    back = InteractionData.read(tmp_path / "ml-100k")
    assert_same(back, movielens.load_movielens("ml-100k", ml100k_raw))
