"""``prepare``: raw data (a MovieLens release or any CSV/Parquet event log) -> a prepared directory.

Everything is parsed and checked in memory before the first byte is written, and each table is
written atomically with the manifest last, so a failure never leaves a half-prepared directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from seekrec.data.download import download_release
from seekrec.data.log_import import EVENT_LOG_FORMATS, EventLogColumns, load_event_log
from seekrec.data.movielens import RELEASES, find_release_dir, load_movielens
from seekrec.data.schema import InteractionData

logger = logging.getLogger(__name__)

DATASET_NAMES: tuple[str, ...] = (*RELEASES, *EVENT_LOG_FORMATS)


def prepare_dataset(
    name: str,
    raw_dir: str | Path | None,
    out_dir: str | Path,
    *,
    download: bool = False,
    min_rating: float | None = None,
    verify_counts: bool = True,
    columns: EventLogColumns | None = None,
    items_path: str | Path | None = None,
) -> dict[str, Any]:
    """Load dataset ``name`` and write it to ``out_dir``; returns the manifest.

    For a MovieLens release, ``raw_dir`` is the extracted release folder or a folder containing it
    (``None`` means ``<out_dir>/../raw``); with ``download`` the official archive is fetched there first
    when the files are absent. For ``csv`` / ``parquet``, ``raw_dir`` is the event-log file, ``columns``
    names its columns, ``items_path`` is an optional items file and ``min_rating`` thresholds the value
    column.
    """
    if name in RELEASES:
        data = _load_release(name, raw_dir, Path(out_dir), download, min_rating, verify_counts)
    elif name in EVENT_LOG_FORMATS:
        if raw_dir is None:
            raise ValueError(f"{name}: pass the event-log file as raw_dir")
        if download:
            raise ValueError(f"{name}: download applies to MovieLens releases only")
        data = load_event_log(raw_dir, columns or EventLogColumns(), items_path=items_path,
                              file_format=name, min_value=min_rating)
    else:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    manifest = data.write(out_dir)
    logger.info("prepared %s: %d events, %d users, %d items in %s", name, data.events.num_rows, data.n_users,
                data.n_items, out_dir)
    return manifest


def _load_release(
    name: str, raw_dir: str | Path | None, out_dir: Path, download: bool, min_rating: float | None,
    verify_counts: bool,
) -> InteractionData:
    root = Path(raw_dir) if raw_dir is not None else out_dir.parent / "raw"
    folder = find_release_dir(name, root)
    if folder is None and download:
        folder = download_release(name, root)
    if folder is None:
        logger.info("%s: no %s found under %s", name, RELEASES[name].ratings_file, root)
        folder = root  # load_movielens names the missing file and how to get it
    return load_movielens(name, folder, min_rating=min_rating, verify_counts=verify_counts)
