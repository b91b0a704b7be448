"""Model registry: versioned model artifacts that trainers publish and servers load.

Layout under ``root`` (a local directory, or shared storage with POSIX rename and ``flock``)::

    versions/v000001/model.safetensors  weights (safetensors: nothing here is ever pickled)
    versions/v000001/manifest.json      version, created, model name + resolved config, data spec,
                                        metrics, parent, extra, sha256 + size of every other file
    versions/v000001/<extra files>      e.g. an item vocabulary JSON
    CURRENT                             the promoted version, one line
    history.json                        promotion stack (rollback targets) and recent events
    .staging/<host>-<pid>-<hex>/        a publish in progress; readers never look here
    .trash/                             versions being deleted by retention
    .lock                               ``flock`` that serialises CURRENT / history / retention

Why readers never see half an artifact: a version is built and fsynced in ``.staging``, then
renamed into ``versions/`` in one step, and retention renames a version out to ``.trash`` before it
deletes it. Version ids need no lock: ``os.rename`` of a non-empty directory onto an existing
version fails (as ``os.mkdir`` would), so of two concurrent publishers the loser retries with the
next number. ``CURRENT`` is replaced with tempfile + ``os.replace``.

Hot swap: a server polls :meth:`ModelRegistry.current`, which reads the one small ``CURRENT`` file,
and calls :meth:`ModelRegistry.load` only when the version it names changes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from seekrec.io import atomic_write_bytes, atomic_write_json, sha256_file
from seekrec.registry_artifacts import (
    RegistryError,
    VersionInfo,
    checked_config,
    format_manifest,
    format_versions,
    load_weights,
    parse_version,
    read_run,
)

__all__ = ["LoadedBundle", "LoadedModel", "ModelRegistry", "RegistryError", "VersionInfo", "format_manifest", "format_versions",
           "parse_version"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
PINS_FILE = "pins.json"
HISTORY_FILE = "history.json"
VERSIONS_DIR, STAGING_DIR, TRASH_DIR, LOCK_FILE = "versions", ".staging", ".trash", ".lock"
MAX_STACK = 100  # promotions remembered for rollback; history.json stays small under frequent publishing
MAX_EVENTS = 1000
STALE_STAGING_SECONDS = 6 * 3600  # a staging dir of another host older than this belongs to a dead publish
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MODEL_KIND = "model"  # one model + weights file; other kinds are bundles of files (``publish_bundle``)


@dataclass
class LoadedModel:
    """A verified model in eval mode, with its manifest and directory (for extra files)."""

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
        return str(self.manifest.get("kind", MODEL_KIND))


class ModelRegistry:
    """Versioned model artifacts under ``root``; after each publish the newest ``keep`` versions are
    kept, plus the current version and the rollback target whatever their age."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 10) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root, self.keep = Path(root), keep

    # -- reading ---------------------------------------------------------------------------
    def current(self) -> str | None:
        """The promoted version, or None. Reads one small file, so servers may poll it every second."""
        path = self.root / CURRENT_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        try:
            return parse_version(text)
        except RegistryError as exc:
            raise RegistryError(f"{path}: {exc}; promote a version to rewrite it") from exc

    def versions(self) -> list[VersionInfo]:
        """Published versions, oldest first; staging directories of unfinished publishes are not listed."""
        current, infos = self.current(), []
        for name in self._published():
            try:
                doc = self.manifest(name)
            except RegistryError:
                if (self._dir(name)).exists():
                    raise
                continue  # deleted by retention in another process since it was listed
            infos.append(VersionInfo(name, doc["created"], doc["model_name"], doc["metrics"], doc["parent"],
                                     name == current))
        return infos

    def manifest(self, version: str | int) -> dict[str, Any]:
        """The manifest of ``version`` (see the module docstring for its fields)."""
        version = parse_version(version)
        path = self._dir(version) / MANIFEST_FILE
        if not path.is_file():
            known = ", ".join(self._published()) or "none"
            raise RegistryError(f"unknown version {version} in {self.root} (published: {known})")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable manifest ({exc}); publish the model again") from exc
        if doc.get("format_version", 0) > FORMAT_VERSION:
            raise RegistryError(f"{path}: format_version {doc['format_version']} is newer than this seekrec "
                                f"understands ({FORMAT_VERSION}); upgrade seekrec")
        return doc

    def verify(self, version: str | int) -> dict[str, dict[str, Any]]:
        """Recompute the sha256 of every file the manifest lists; returns ``{file: {"sha256", "bytes"}}``.

        Files in the directory that the manifest does not list are never read, so they are ignored.
        """
        doc = self.manifest(version)
        directory = self._dir(doc["version"])
        for name, meta in doc["files"].items():
            path = directory / name
            if not path.is_file():
                raise RegistryError(f"{path}: missing, but the manifest of {doc['version']} lists it; the artifact "
                                    "is incomplete and will not be loaded: promote another version")
            if path.stat().st_size != meta["bytes"] or sha256_file(path) != meta["sha256"]:
                raise RegistryError(f"{path}: sha256 does not match the manifest of {doc['version']} (changed or "
                                    "corrupted); it will not be loaded: promote another version or publish again")
        return doc["files"]

    def load(self, version: str | int | None = None, device: str | torch.device = "cpu") -> LoadedModel:
        """Verify checksums, then build the model from its manifest and load the weights (eval mode).

        ``version=None`` loads the current version. Side-feature buffers (``n_side_features > 0``)
        are part of the weights, so the model is built with zeros and filled by the load.
        """
        from seekrec.models.factory import build_model  # lazy: `registry list` should not import transformers

        resolved = self.current() if version is None else parse_version(version)
        if resolved is None:
            raise RegistryError(f"no current version in {self.root}: publish one or promote an existing version")
        doc = self.manifest(resolved)
        if doc.get("kind", MODEL_KIND) != MODEL_KIND:
            raise RegistryError(f"{resolved} is a {doc['kind']} bundle, not a single model: load it with "
                                "ModelRegistry.load_bundle (seekrec serve does)")
        self.verify(resolved)
        config = doc["model_config"]
        model = build_model(doc["model_name"], config, config["n_items"])
        path = self._dir(resolved) / WEIGHTS_FILE
        load_weights(model, path, f"{doc['model_name']} built from its manifest")
        return LoadedModel(resolved, doc, model.to(device).eval(), self._dir(resolved))

    def load_bundle(self, version: str | int | None = None) -> LoadedBundle:
        """Verify every file of a version (any kind) and return its directory; ``None``: current."""
        resolved = self.current() if version is None else parse_version(version)
        if resolved is None:
            raise RegistryError(f"no current version in {self.root}: publish one or promote an existing version")
        doc = self.manifest(resolved)
        self.verify(resolved)
        return LoadedBundle(resolved, doc, self._dir(resolved))

    def rollback_target(self) -> str | None:
        """The version :meth:`rollback` would switch to (the one current before the present one)."""
        stack = self._stack(self._read_history())
        return stack[-2] if len(stack) >= 2 else None

    # -- writing ---------------------------------------------------------------------------
    def publish(
        self,
        model: nn.Module,
        *,
        model_name: str,
        model_config: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        data_spec: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, bytes] | None = None,
        promote: bool = True,
    ) -> str:
        """Publish ``model`` (the raw module, not a DDP / compiled wrapper) as a new version; returns it.

        ``model_config`` is validated and stored with every default filled in, and the model's
        state dict must match a model built from it, so a version that could not be loaded later
        is refused now. ``data_spec`` records what the model was trained on (e.g.
        ``data_manifest_sha256``, ``feature_spec_version``); ``extra`` is free-form JSON (e.g. the
        online trainer's offset); ``extra_files`` are stored beside the weights and checksummed.
        """
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
        return self._after_publish(version, promote)

    def publish_bundle(
        self,
        directory: str | os.PathLike[str],
        *,
        kind: str,
        name: str,
        metrics: Mapping[str, Any] | None = None,
        parent: str | None = None,
        data_spec: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        promote: bool = True,
    ) -> str:
        """Publish every file under ``directory`` (sub-directories kept) as one version of ``kind``.

        For artifacts that are more than one model: a multi-stage pipeline is a feature spec, a
        retriever, a ranker and a calibrator that must be served together, so they are versioned,
        checksummed, promoted and rolled back as one unit. ``name`` shows in ``registry list``.
        """
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
        return self._after_publish(version, promote)

    def _new_staging(self) -> Path:
        """A fresh private directory a publish builds its version in (readers never look there)."""
        self.cleanup()
        staging = self.root / STAGING_DIR / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        return staging

    def _after_publish(self, version: str, promote: bool) -> str:
        if promote:
            self._set_current(version, "promote")
        self._retain()
        return version

    def publish_run(self, run_dir: str | os.PathLike[str], promote: bool = True) -> str:
        """Publish the best checkpoint of a ``seekrec train`` run directory; returns the version.

        Metrics are stored as ``valid/<metric>`` and ``test/<metric>``; see
        :func:`seekrec.registry_artifacts.read_run` for what is read.
        """
        run = read_run(run_dir)
        return self.publish(run.model, model_name=run.model_name, model_config=run.model_config,
                            metrics=run.metrics, data_spec=run.data_spec, extra=run.extra,
                            extra_files=run.extra_files, promote=promote)

    def promote(self, version: str | int) -> None:
        """Make ``version`` current after verifying its checksums; the previous one becomes the rollback target."""
        version = parse_version(version)
        self.verify(version)  # outside the lock: hashing a large model must not block other writers
        self._set_current(version, "promote")

    def pin(self, version: str | int, reason: str = "") -> None:
        """Protect ``version`` from retention, e.g. while an A/B arm or a canary serves it."""
        version = parse_version(version)
        self.manifest(version)  # unknown versions are an error
        with self._locked():
            pins = self.pins()
            pins[version] = reason
            atomic_write_json(self.root / PINS_FILE, pins)

    def unpin(self, version: str | int) -> None:
        """Let retention delete ``version`` again (a no-op when it was not pinned)."""
        version = parse_version(version)
        with self._locked():
            pins = self.pins()
            if pins.pop(version, None) is not None:
                atomic_write_json(self.root / PINS_FILE, pins)

    def pins(self) -> dict[str, str]:
        """Pinned versions and why they were pinned."""
        path = self.root / PINS_FILE
        if not path.exists():
            return {}
        try:
            return dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: not a JSON object of pinned versions ({exc}); fix or delete it") from exc

    def rollback(self) -> str:
        """Switch CURRENT back to the version that was current before the present one; returns it.

        Repeated rollbacks walk further back through the promotion history.
        """
        with self._locked():
            history = self._read_history()
            stack = self._stack(history)
            if len(stack) < 2:
                why = "no version was ever promoted" if not stack else f"{stack[-1]} is the first promoted version"
                raise RegistryError(f"nothing to roll back to in {self.root}: {why}")
            target = stack[-2]
            if not (self._dir(target) / MANIFEST_FILE).is_file():
                raise RegistryError(f"rollback target {target} no longer exists in {self.root} (deleted by retention "
                                    "or by hand); promote an existing version instead")
            self.verify(target)
            self._write_pointer(target, stack[:-1], history, "rollback")
        log.info("rolled back %s to %s", stack[-1], target)
        return target

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

    # -- internals -------------------------------------------------------------------------
    def _dir(self, version: str) -> Path:
        return self.root / VERSIONS_DIR / version

    def _published(self) -> list[str]:
        names = [p.name for p in _children(self.root / VERSIONS_DIR)
                 if re.fullmatch(r"v\d{6,}", p.name) and (p / MANIFEST_FILE).is_file()]
        return sorted(names, key=lambda n: int(n[1:]))

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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``root/.lock``: CURRENT + history read-modify-writes and retention."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read_history(self) -> dict[str, Any]:
        path = self.root / HISTORY_FILE
        if not path.exists():
            return {"stack": [], "events": []}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable ({exc}); delete it to reset the rollback history") from exc

    def _stack(self, history: dict[str, Any]) -> list[str]:
        """The promotion stack, reconciled with CURRENT: CURRENT is written first, so after a crash
        between the two writes (or a hand edit) CURRENT wins and is pushed on top."""
        stack, current = list(history["stack"]), self.current()
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        return stack

    def _set_current(self, version: str, action: str) -> None:
        with self._locked():
            if not (self._dir(version) / MANIFEST_FILE).is_file():
                raise RegistryError(f"cannot {action} {version}: it is not published in {self.root}")
            history = self._read_history()
            stack = self._stack(history)
            if stack and stack[-1] == version:
                return
            self._write_pointer(version, [*stack, version], history, action)
        log.info("%s %s: now current in %s", action, version, self.root)

    def _write_pointer(self, version: str, stack: list[str], history: dict[str, Any], action: str) -> None:
        atomic_write_bytes(self.root / CURRENT_FILE, f"{version}\n".encode())
        events = [*history["events"], {"at": _utc_now(), "action": action, "version": version}]
        atomic_write_json(self.root / HISTORY_FILE, {"stack": stack[-MAX_STACK:], "events": events[-MAX_EVENTS:]})

    def _retain(self) -> None:
        """Delete all but the newest ``keep`` versions, sparing the current one, the rollback target
        and pinned versions."""
        with self._locked():
            names = self._published()
            stack = self._stack(self._read_history())
            protected = set(names[-self.keep :]) | set(stack[-2:]) | set(self.pins())
            for name in names:
                if name not in protected:
                    trash = self.root / TRASH_DIR / f"{name}-{uuid.uuid4().hex[:8]}"
                    trash.parent.mkdir(exist_ok=True)
                    os.rename(self._dir(name), trash)  # readers see the version whole or not at all
                    shutil.rmtree(trash, ignore_errors=True)  # leftovers go at the next cleanup()
                    log.info("retention: deleted %s", name)


def _new_manifest(kind: str, name: str, config: Mapping[str, Any], metrics: Mapping[str, Any] | None,
                  parent: str | None, data_spec: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """A manifest without version and files yet; refuses values JSON cannot hold (NaN, objects)."""
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "version": None, "created": _utc_now(), "model_name": name,
        "model_config": dict(config), "data_spec": dict(data_spec or {}), "metrics": dict(metrics or {}),
        "parent": parse_version(parent) if parent is not None else None, "extra": dict(extra or {}), "files": {},
    }
    if kind != MODEL_KIND:
        doc["kind"] = kind
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


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
