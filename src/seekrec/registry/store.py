"""Version storage: the ``versions/`` directory, publishing through ``.staging``, manifests,
checksums and loading. Which version is current is the pointer's business (``registry.pointer``).

Why readers never see half an artifact: a version is built and fsynced in ``.staging``, then
renamed into ``versions/`` in one step, and retention renames a version out to ``.trash`` before it
deletes it (:meth:`VersionStore.discard`). Version ids need no lock: ``os.rename`` of a non-empty
directory onto an existing version fails (as ``os.mkdir`` would), so of two concurrent publishers
the loser retries with the next number.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from seekrec.io import atomic_write_json, sha256_file
from seekrec.registry.artifacts import (
    RegistryError,
    checked_config,
    load_weights,
    parse_version,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
VERSIONS_DIR, STAGING_DIR, TRASH_DIR = "versions", ".staging", ".trash"
STALE_STAGING_SECONDS = 6 * 3600  # a staging dir of another host older than this belongs to a dead publish
MODEL_KIND = "model"  # one model + weights file; other kinds are bundles of files (``publish_bundle``)
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class LoadedModel:
    """A verified model in eval mode, with its manifest and directory (for extra files).

    A model with event-time / action inputs (``model_config`` with ``time_features``, ...) is served and
    trained online like any other: the user histories keep each event's time and value to feed it."""

    version: str
    manifest: dict[str, Any]
    model: nn.Module
    directory: Path


@dataclass
class LoadedBundle:
    """A verified bundle version (e.g. a multi-stage pipeline): its manifest and directory of files."""

    version: str
    manifest: dict[str, Any]
    directory: Path

    @property
    def kind(self) -> str:
        return manifest_kind(self.manifest)


def manifest_kind(manifest: Mapping[str, Any]) -> str:
    """The kind a manifest records; manifests written before every version recorded one are models."""
    return str(manifest.get("kind", MODEL_KIND))


class VersionStore:
    """Published versions under ``root/versions``: write them (atomically), read, verify and load them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def directory(self, version: str) -> Path:
        return self.root / VERSIONS_DIR / version

    def exists(self, version: str) -> bool:
        return (self.directory(version) / MANIFEST_FILE).is_file()

    def published(self) -> list[str]:
        """Published version ids, oldest first (unfinished publishes in ``.staging`` are not versions)."""
        names = [p.name for p in _children(self.root / VERSIONS_DIR)
                 if re.fullmatch(r"v\d{6,}", p.name) and (p / MANIFEST_FILE).is_file()]
        return sorted(names, key=lambda n: int(n[1:]))

    def manifest(self, version: str | int) -> dict[str, Any]:
        """The manifest of ``version`` (see :mod:`seekrec.registry` for its fields)."""
        version = parse_version(version)
        path = self.directory(version) / MANIFEST_FILE
        if not path.is_file():
            known = ", ".join(self.published()) or "none"
            raise RegistryError(f"unknown version {version} in {self.root} (published: {known})")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable manifest ({exc}); publish the model again") from exc
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise RegistryError(f"{path}: format_version {doc['format_version']} is newer than this seekrec "
                                f"understands ({FORMAT_VERSION}); upgrade seekrec")
        return doc

    def kind(self, version: str | int) -> str:
        """``model`` or a bundle kind (e.g. ``pipeline``), from the manifest alone (no checksum work)."""
        return manifest_kind(self.manifest(version))

    def verify(self, version: str | int) -> dict[str, dict[str, Any]]:
        """Recompute the sha256 of every file the manifest lists; returns ``{file: {"sha256", "bytes"}}``.

        Files in the directory that the manifest does not list are never read, so they are ignored.
        """
        doc = self.manifest(version)
        directory = self.directory(doc["version"])
        for name, meta in doc["files"].items():
            path = _inside(directory, name, doc["version"])
            if not path.is_file():
                raise RegistryError(f"{path}: missing, but the manifest of {doc['version']} lists it; the artifact "
                                    "is incomplete and will not be loaded: promote another version")
            if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
                raise RegistryError(f"{path}: sha256 does not match the manifest of {doc['version']} (changed or "
                                    "corrupted); it will not be loaded: promote another version or publish again")
        return doc["files"]

    def load(self, version: str, device: str | torch.device = "cpu") -> LoadedModel:
        """Verify checksums, then build the model from its manifest and load the weights (eval mode).

        Side-feature buffers (``n_side_features > 0``) are part of the weights, so the model is built
        with zeros and filled by the load.
        """
        from seekrec.models.factory import (
            build_model,  # lazy: `registry list` should not import transformers
        )

        doc = self.manifest(version)
        if manifest_kind(doc) != MODEL_KIND:
            raise RegistryError(f"{version} is a {doc['kind']} bundle, not a single model: load it with "
                                "ModelRegistry.load_bundle (seekrec serve does)")
        self.verify(version)
        config = doc["model_config"]
        model = build_model(doc["model_name"], config, config["n_items"])
        load_weights(model, self.directory(version) / WEIGHTS_FILE, f"{doc['model_name']} built from its manifest")
        return LoadedModel(version, doc, model.to(device).eval(), self.directory(version))

    def load_bundle(self, version: str) -> LoadedBundle:
        """Verify every file of a version (any kind) and return its directory."""
        doc = self.manifest(version)
        self.verify(version)
        return LoadedBundle(version, doc, self.directory(version))

    # -- writing ---------------------------------------------------------------------------
    def publish_model(self, model: nn.Module, *, model_name: str, model_config: Mapping[str, Any],
                      metrics: Mapping[str, Any] | None = None, parent: str | None = None,
                      data_spec: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                      extra_files: Mapping[str, bytes] | None = None) -> str:
        """Store ``model`` as a new (unpromoted) version; see :meth:`seekrec.registry.ModelRegistry.publish`."""
        config = checked_config(model, model_name, model_config)
        for name in extra_files or {}:
            if not _FILE_NAME_RE.fullmatch(name) or name in (WEIGHTS_FILE, MANIFEST_FILE):
                raise RegistryError(f"extra file name {name!r} must be a plain file name other than "
                                    f"{WEIGHTS_FILE} and {MANIFEST_FILE}")
        doc = _new_manifest(MODEL_KIND, model_name, config, metrics, parent, data_spec, extra)
        staging = self._new_staging()
        try:
            save_model(model, str(staging / WEIGHTS_FILE))
            for name, data in (extra_files or {}).items():
                (staging / name).write_bytes(data)
            for path in sorted(staging.iterdir()):
                _fsync(path)
                doc["files"][path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            version = self._claim(staging, doc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
        log.info("published %s (%s) in %s", version, model_name, self.root)
        return version

    def publish_bundle(self, directory: str | os.PathLike[str], *, kind: str, name: str,
                       metrics: Mapping[str, Any] | None = None, parent: str | None = None,
                       data_spec: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> str:
        """Store every file under ``directory`` as a new (unpromoted) version of ``kind``; see
        :meth:`seekrec.registry.ModelRegistry.publish_bundle`."""
        source = Path(directory)
        if kind == MODEL_KIND or not _FILE_NAME_RE.fullmatch(kind):
            raise RegistryError(f"bundle kind {kind!r} must be a plain name other than {MODEL_KIND!r}")
        files = sorted(p for p in source.rglob("*") if p.is_file())
        if not files:
            raise RegistryError(f"{source}: no files to publish")
        for path in files:
            parts = path.relative_to(source).parts
            if not all(_FILE_NAME_RE.fullmatch(part) for part in parts) or parts == (MANIFEST_FILE,):
                raise RegistryError(f"{path}: bundle file names must be plain names (letters, digits, . _ -) "
                                    f"and not {MANIFEST_FILE} at the top")
        doc = _new_manifest(kind, name, {}, metrics, parent, data_spec, extra)
        staging = self._new_staging()
        try:
            for path in files:
                relative = path.relative_to(source)
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                _fsync(target)
                doc["files"][relative.as_posix()] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
            for sub in sorted({p.parent for p in staging.rglob("*") if p.is_file()}, reverse=True):
                _fsync(sub)
            version = self._claim(staging, doc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("published %s (%s bundle %s) in %s", version, kind, name, self.root)
        return version

    def discard(self, version: str) -> None:
        """Delete a version: renamed out to ``.trash`` first, so readers see it whole or not at all."""
        trash = self.root / TRASH_DIR / f"{version}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(exist_ok=True)
        os.rename(self.directory(version), trash)
        shutil.rmtree(trash, ignore_errors=True)  # leftovers go at the next cleanup()

    def cleanup(self) -> list[Path]:
        """Remove what killed processes left behind: abandoned staging dirs and half-deleted versions.

        A staging dir is abandoned when its publisher (pid in its name) is dead on this host, or when
        it belongs to another host and is older than ``STALE_STAGING_SECONDS``. Returns what was removed.
        """
        removed, host, now = [], socket.gethostname(), time.time()
        for path in _children(self.root / STAGING_DIR):
            owner, _, rest = path.name.rpartition("-")[0].rpartition("-")
            try:
                alive = _pid_alive(int(rest)) if owner == host else now - path.stat().st_mtime < STALE_STAGING_SECONDS
            except (ValueError, FileNotFoundError):
                alive = False
            if not alive:
                removed.append(path)
        removed += _children(self.root / TRASH_DIR)
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed leftover %s", path)
        return removed

    def _new_staging(self) -> Path:
        """A fresh private directory a publish builds its version in (readers never look there)."""
        self.cleanup()
        staging = self.root / STAGING_DIR / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def _claim(self, staging: Path, doc: dict[str, Any]) -> str:
        """Rename ``staging`` to the next free version id; a rename onto an existing (non-empty)
        version fails, so a concurrent publisher that took the id makes us retry with the next."""
        versions = self.root / VERSIONS_DIR
        versions.mkdir(exist_ok=True)
        number = self._next_number()
        while True:
            doc["version"] = name = f"v{number:06d}"
            atomic_write_json(staging / MANIFEST_FILE, doc)  # written last, fsynced by atomic_path
            _fsync(staging)
            try:
                os.rename(staging, versions / name)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                number = max(number + 1, self._next_number())
                continue
            _fsync(versions)
            return name

    def _next_number(self) -> int:
        numbers = [int(p.name[1:]) for p in _children(self.root / VERSIONS_DIR) if re.fullmatch(r"v\d+", p.name)]
        return max(numbers, default=0) + 1


def _new_manifest(kind: str, name: str, config: Mapping[str, Any], metrics: Mapping[str, Any] | None,
                  parent: str | None, data_spec: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """A manifest without version and files yet; it records its ``kind`` (models too), so readers and
    the server dispatch on what a version says it is. Refuses values JSON cannot hold (NaN, objects)."""
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "version": None, "kind": kind, "created": utc_now(), "model_name": name,
        "model_config": dict(config), "data_spec": dict(data_spec or {}), "metrics": dict(metrics or {}),
        "parent": parse_version(parent) if parent is not None else None, "extra": dict(extra or {}), "files": {},
    }
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"metrics, data_spec and extra must be finite JSON values: {exc}") from exc
    return doc


def _children(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def utc_now() -> str:
    """Now, as ISO 8601 UTC with milliseconds (manifests and history events)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _inside(directory: Path, name: str, version: str) -> Path:
    """``directory / name``, refusing names that leave the version directory (``../x``, absolute paths,
    symlinks out): a tampered manifest must not make verification or loading read files elsewhere."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or Path(name).is_absolute() or ".." in pure.parts or "\\" in name:
        raise RegistryError(f"manifest of {version} lists file {name!r}, which is not inside {directory}; the "
                            "manifest is corrupt or tampered with: promote another version")
    path = directory / name
    if not path.resolve().is_relative_to(directory.resolve()):
        raise RegistryError(f"manifest of {version} lists file {name!r}, which resolves outside {directory}; "
                            "promote another version")
    return path
