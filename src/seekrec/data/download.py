"""Fetch an official MovieLens archive, check it against GroupLens' checksum, extract it atomically.

The archive is streamed into a temporary folder beside the destination and only renamed into place
once its checksum matched and it extracted completely, so an interrupted or corrupted download never
leaves a folder that looks like a release.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from seekrec.data.movielens import get_release

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MD5_RE = re.compile(r"\b[0-9a-fA-F]{32}\b")


class DownloadError(RuntimeError):
    """A download that failed or did not match its published checksum; nothing was left behind."""


def download_release(name: str, dest_dir: str | Path, *, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download release ``name`` into ``dest_dir/name`` and return that folder.

    ``url`` replaces the official address (a mirror, or a ``file://`` URL); the checksum is still the
    official one. Releases without a fixed checksum (ml-latest*) are checked against the ``<zip>.md5``
    file published beside the archive. Raises ``FileExistsError`` if the folder already exists.
    """
    spec = get_release(name)
    dest = Path(dest_dir)
    target = dest / spec.name
    if target.exists():
        raise FileExistsError(f"{target} already exists: use it as the raw folder, or delete it to download again")
    source = url or spec.url
    expected = spec.md5 or published_md5(source + ".md5", timeout)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=dest) as tmp:
        archive = Path(tmp) / (Path(urlparse(source).path).name or f"{spec.name}.zip")
        logger.info("downloading %s", source)
        actual = _fetch(source, archive, timeout, spec.name)
        if actual != expected.lower():
            raise DownloadError(f"{source}: md5 is {actual} but GroupLens publishes {expected}; the download is "
                                "corrupt or not the official archive and was deleted. Try again, or check any "
                                "proxy or mirror in between.")
        extracted = Path(tmp) / "extracted"
        _extract(archive, extracted)
        folder = extracted / spec.archive_folder
        if not folder.is_dir():
            raise DownloadError(f"{source}: the archive has no {spec.archive_folder}/ folder; it is not {spec.name}")
        os.replace(folder, target)
    logger.info("extracted %s into %s", spec.name, target)
    return target


def published_md5(url: str, timeout: float = 60.0) -> str:
    """Read a GroupLens checksum file (``MD5 (x.zip) = <hex>`` or ``<hex>  x.zip``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(4096).decode("ascii", errors="replace")
    except OSError as exc:
        raise DownloadError(f"cannot read the published checksum {url}: {exc}") from exc
    match = _MD5_RE.search(text)
    if match is None:
        raise DownloadError(f"{url} holds no md5 checksum: {text[:200]!r}")
    return match.group(0).lower()


def _fetch(url: str, path: Path, timeout: float, label: str) -> str:
    """Stream ``url`` into ``path`` with a progress bar; returns the md5 hex digest."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except OSError as exc:
        raise DownloadError(f"downloading {url} failed: {exc}") from exc
    return digest.hexdigest()


def _extract(archive: Path, into: Path) -> None:
    """Extract a zip, refusing members that would land outside ``into`` (absolute or ``..`` paths)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = into.resolve()
            for member in zf.infolist():
                target = (into / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise DownloadError(f"{archive.name}: member {member.filename!r} would be written outside the "
                                        "extraction folder; refusing the archive")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive.name} is not a valid zip archive ({exc})") from exc
