"""``ModelRegistry``: the store and the pointer composed behind one API (see the package docstring)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seekrec.registry.artifacts import (
    RegistryError,
    VersionInfo,
    parse_channel,
    parse_version,
    read_run,
)
from seekrec.registry.pointer import VersionPointer
from seekrec.registry.store import LoadedBundle, LoadedModel, VersionStore


class ModelRegistry:
    """Versioned model artifacts under ``root``: storage (``store``) and the CURRENT pointer
    (``pointer``) behind one API; after each publish the newest ``keep`` versions are kept, plus the
    current version and the rollback target whatever their age."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 10) -> None:
        self.root, self.keep = Path(root), keep
        self.store = VersionStore(self.root)
        self.pointer = VersionPointer(self.store, keep)

    # -- reading ---------------------------------------------------------------------------
    def current(self) -> str | None:
        """The promoted version, or None. Reads one small file, so servers may poll it every second."""
        return self.pointer.current()

    def versions(self) -> list[VersionInfo]:
        """Published versions, oldest first; staging directories of unfinished publishes are not listed."""
        current, infos = self.current(), []
        for name in self.store.published():
            try:
                doc = self.manifest(name)
            except RegistryError:
                if self.store.directory(name).exists():
                    raise
                continue  # deleted by retention in another process since it was listed
            infos.append(VersionInfo(name, doc["created"], doc["model_name"], doc["metrics"], doc["parent"],
                                     name == current))
        return infos

    def manifest(self, version: str | int) -> dict[str, Any]:
        """The manifest of ``version`` (see the module docstring for its fields)."""
        return self.store.manifest(version)

    def kind(self, version: str | int) -> str:
        """``model`` or a bundle kind (e.g. ``pipeline``), as the version's manifest records it."""
        return self.store.kind(version)

    def verify(self, version: str | int) -> dict[str, dict[str, Any]]:
        """Recompute the sha256 of every file the manifest lists; returns ``{file: {"sha256", "bytes"}}``."""
        return self.store.verify(version)

    def load(self, version: str | int | None = None, device: str | torch.device = "cpu") -> LoadedModel:
        """Verify checksums, then build the model of ``version`` (None: current) in eval mode."""
        return self.store.load(self._resolve(version), device)

    def load_bundle(self, version: str | int | None = None) -> LoadedBundle:
        """Verify every file of a version (any kind) and return its directory; ``None``: current."""
        return self.store.load_bundle(self._resolve(version))

    def channel(self, name: str) -> str | None:
        """The head of channel ``name`` (None before its first publish); see ``pointer``'s docstring."""
        return self.pointer.channel(name)

    def channels(self) -> dict[str, str]:
        """Every channel and the version it points at."""
        return self.pointer.channels()

    def rollback_target(self) -> str | None:
        """The version :meth:`rollback` would switch to (the one current before the present one)."""
        return self.pointer.rollback_target()

    def pins(self) -> dict[str, str]:
        """Pinned versions and why they were pinned."""
        return self.pointer.pins()

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
        channel: str | None = None,
    ) -> str:
        """Publish ``model`` (the raw module, not a DDP / compiled wrapper) as a new version; returns it.

        ``model_config`` is validated and stored with every default filled in, and the model's
        state dict must match a model built from it, so a version that could not be loaded later
        is refused now. ``data_spec`` records what the model was trained on (e.g.
        ``data_manifest_sha256``, ``feature_spec_version``); ``extra`` is free-form JSON (e.g. the
        online trainer's offset); ``extra_files`` are stored beside the weights and checksummed.
        ``channel``: move that channel to the new version instead of promoting CURRENT.
        """
        if channel is not None:
            parse_channel(channel)  # a bad name fails before the weights are written
        version = self.store.publish_model(model, model_name=model_name, model_config=model_config, metrics=metrics,
                                           parent=parent, data_spec=data_spec, extra=extra, extra_files=extra_files)
        return self._after_publish(version, promote and channel is None, channel)

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
        version = self.store.publish_bundle(directory, kind=kind, name=name, metrics=metrics, parent=parent,
                                            data_spec=data_spec, extra=extra)
        return self._after_publish(version, promote)

    def publish_run(self, run_dir: str | os.PathLike[str], promote: bool = True) -> str:
        """Publish the best checkpoint of a ``seekrec train`` run directory; returns the version.

        Metrics are stored as ``valid/<metric>`` and ``test/<metric>``; see
        :func:`seekrec.registry.artifacts.read_run` for what is read.
        """
        run = read_run(run_dir)
        return self.publish(run.model, model_name=run.model_name, model_config=run.model_config,
                            metrics=run.metrics, data_spec=run.data_spec, extra=run.extra,
                            extra_files=run.extra_files, promote=promote)

    def promote(self, version: str | int) -> None:
        """Make ``version`` current after verifying its checksums; the previous one becomes the rollback target."""
        version = parse_version(version)
        self.verify(version)  # outside the lock: hashing a large model must not block other writers
        self.pointer.promote(version)

    def pin(self, version: str | int, reason: str = "") -> None:
        """Protect ``version`` from retention, e.g. while an A/B arm or a canary serves it."""
        self.pointer.pin(parse_version(version), reason)

    def unpin(self, version: str | int) -> None:
        """Let retention delete ``version`` again (a no-op when it was not pinned)."""
        self.pointer.unpin(parse_version(version))

    def rollback(self) -> str:
        """Switch CURRENT back to the version that was current before the present one; returns it.

        Repeated rollbacks walk further back through the promotion history.
        """
        return self.pointer.rollback()

    def cleanup(self) -> list[Path]:
        """Remove what killed processes left behind: abandoned staging dirs and half-deleted versions."""
        return self.store.cleanup()

    def _resolve(self, version: str | int | None) -> str:
        resolved = self.current() if version is None else parse_version(version)
        if resolved is None:
            raise RegistryError(f"no current version in {self.root}: publish one or promote an existing version")
        return resolved

    def _after_publish(self, version: str, promote: bool, channel: str | None = None) -> str:
        if channel is not None:
            self.pointer.set_channel(channel, version)
        if promote:
            self.pointer.promote(version)
        self.pointer.retain()
        return version
