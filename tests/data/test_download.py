"""Downloading releases: checksum verified, atomic extraction, nothing left behind on failure (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from seekrec.data import download as download_module
from seekrec.data import movielens
from seekrec.data.download import DownloadError, download_release, published_md5

FILES = {"u.data": "1\t2\t3\t4\n", "u.item": "2|A (1990)|||" + "|0" * 19 + "\n", "u.user": "1|20|M|x|1\n"}


def make_zip(path: Path, folder: str, files: dict[str, str] = FILES) -> str:
    """Write a release-like zip; returns its md5."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text)
    return hashlib.md5(path.read_bytes()).hexdigest()


def with_md5(monkeypatch: pytest.MonkeyPatch, name: str, md5: str | None) -> None:
    monkeypatch.setitem(movielens.RELEASES, name, dataclasses.replace(movielens.RELEASES[name], md5=md5))


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    with_md5(monkeypatch, "ml-100k", make_zip(archive, "ml-100k"))
    dest = tmp_path / "raw"
    folder = download_release("ml-100k", dest, url=archive.as_uri())
    assert folder == dest / "ml-100k"
    assert {p.name: p.read_text() for p in folder.iterdir()} == FILES
    assert leftovers(dest) == ["ml-100k"]  # no temporary folder or zip remains


def test_archive_folder_is_renamed_to_the_release_name(tmp_path, monkeypatch):
    archive = tmp_path / "ml-10m.zip"
    files = {"ratings.dat": "1::2::3::4\n", "movies.dat": "2::A (1990)::Drama\n"}
    with_md5(monkeypatch, "ml-10m", make_zip(archive, "ml-10M100K", files))
    folder = download_release("ml-10m", tmp_path / "raw", url=archive.as_uri())
    assert folder == tmp_path / "raw" / "ml-10m" and (folder / "ratings.dat").read_text() == "1::2::3::4\n"


def test_checksum_mismatch_refuses_and_deletes(tmp_path, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    actual = make_zip(archive, "ml-100k")
    with_md5(monkeypatch, "ml-100k", "0" * 32)
    dest = tmp_path / "raw"
    with pytest.raises(DownloadError) as info:
        download_release("ml-100k", dest, url=archive.as_uri())
    assert actual in str(info.value) and "0" * 32 in str(info.value) and "deleted" in str(info.value)
    assert leftovers(dest) == []


def test_latest_releases_use_the_published_sidecar(tmp_path, monkeypatch):
    archive = tmp_path / "ml-latest-small.zip"
    files = {"ratings.csv": "userId,movieId,rating,timestamp\n", "movies.csv": "movieId,title,genres\n"}
    md5 = make_zip(archive, "ml-latest-small", files)
    sidecar = tmp_path / "ml-latest-small.zip.md5"
    sidecar.write_text(f"MD5 (ml-latest-small.zip) = {md5}\n")
    assert movielens.RELEASES["ml-latest-small"].md5 is None
    folder = download_release("ml-latest-small", tmp_path / "raw", url=archive.as_uri())
    assert (folder / "ratings.csv").exists()
    sidecar.write_text(f"{'f' * 32}  ml-latest-small.zip\n")
    with pytest.raises(DownloadError, match="f" * 32):
        download_release("ml-latest-small", tmp_path / "raw2", url=archive.as_uri())
    assert leftovers(tmp_path / "raw2") == []


def test_published_md5_formats(tmp_path):
    digest = "0123456789abcdef0123456789ABCDEF"
    for text in (f"MD5 (x.zip) = {digest}\n", f"{digest}  x.zip\n"):
        (tmp_path / "x.md5").write_text(text)
        assert published_md5((tmp_path / "x.md5").as_uri()) == digest.lower()
    (tmp_path / "x.md5").write_text("Not Found")
    with pytest.raises(DownloadError, match="no md5"):
        published_md5((tmp_path / "x.md5").as_uri())


def test_official_url_is_requested(tmp_path, monkeypatch):
    """With no override the official HTTPS address is fetched (the opener is replaced: no network)."""
    archive = tmp_path / "ml-1m.zip"
    files = {"ratings.dat": "1::2::3::4\n", "movies.dat": "2::A::B\n", "users.dat": "1::M::1::0::1\n"}
    with_md5(monkeypatch, "ml-1m", make_zip(archive, "ml-1m", files))
    payload = archive.read_bytes()
    requested = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    def fake_urlopen(url, timeout):
        requested.append(url)
        return Response(payload)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", fake_urlopen)
    download_release("ml-1m", tmp_path / "raw")
    assert requested == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]


def test_refuses_zip_slip_and_bad_archives(tmp_path, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
        zf.writestr("../evil.txt", "x")
    with_md5(monkeypatch, "ml-100k", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DownloadError, match="outside the extraction folder"):
        download_release("ml-100k", tmp_path / "raw", url=archive.as_uri())
    assert not (tmp_path / "evil.txt").exists() and leftovers(tmp_path / "raw") == []
    archive.write_bytes(b"not a zip")
    with_md5(monkeypatch, "ml-100k", hashlib.md5(b"not a zip").hexdigest())
    with pytest.raises(DownloadError, match="not a valid zip"):
        download_release("ml-100k", tmp_path / "raw", url=archive.as_uri())


def test_existing_target_and_unreachable_url(tmp_path, monkeypatch):
    (tmp_path / "raw" / "ml-100k").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already exists"):
        download_release("ml-100k", tmp_path / "raw")
    with pytest.raises(DownloadError, match="failed"):
        download_release("ml-1m", tmp_path / "raw", url=(tmp_path / "absent.zip").as_uri())
    assert leftovers(tmp_path / "raw") == ["ml-100k"]
