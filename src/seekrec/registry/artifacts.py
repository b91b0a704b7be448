"""What goes into the model registry and how it is shown: version ids, the checks a model passes
before it is published, reading a ``seekrec train`` run directory, and the text the CLI prints.

Models come from two sources: a live module with its model config (the online trainer) and the
best checkpoint of a run directory. Both are checked here so that a version that could not be
loaded later is refused at publish time, not discovered by a server at load time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seekrec.data.vocab import CATALOG_FILE
from seekrec.models import weights

log = logging.getLogger(__name__)
_VERSION_RE = re.compile(r"v?(\d+)")
_CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class RegistryError(RuntimeError):
    """A registry operation that cannot go ahead; the message names the version or file and what to do."""


@dataclass(frozen=True)
class VersionInfo:
    """One row of :meth:`ModelRegistry.versions`."""

    version: str
    created: str
    model_name: str
    metrics: dict[str, Any]
    parent: str | None
    is_current: bool


@dataclass
class RunArtifact:
    """Everything :meth:`seekrec.registry.ModelRegistry.publish` needs, read from a run directory."""

    model: nn.Module
    model_name: str
    model_config: dict[str, Any]
    metrics: dict[str, float]
    data_spec: dict[str, Any]
    extra: dict[str, Any]
    extra_files: dict[str, bytes]


def parse_version(text: str | int) -> str:
    """``"v000003"``, ``"v3"``, ``"3"`` or ``3`` -> ``"v000003"`` (short forms are for the CLI)."""
    match = _VERSION_RE.fullmatch(str(text).strip())
    if match is None or int(match.group(1)) < 1:
        raise RegistryError(f"invalid version {text!r}: expected something like v000003 (or 3)")
    return f"v{int(match.group(1)):06d}"


def parse_channel(name: str) -> str:
    """A channel name (1-64 letters, digits, '.', '_' or '-'): it names a file under ``channels/``."""
    if not isinstance(name, str) or not _CHANNEL_RE.fullmatch(name):
        raise RegistryError(f"channel name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def checked_config(model: nn.Module, model_name: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The full resolved config of ``model`` (every default filled in, so a later change of a default
    cannot alter a stored model), after checking that its state dict matches a model built from it.

    The reference model is built on the meta device: no memory and no initialisation cost.
    """
    from seekrec.models.factory import (  # lazy: keeps transformers off `list`
        build_model,
        build_model_config,
    )

    n_items = model_config.get("n_items", getattr(model, "n_items", None))
    if n_items is None:
        raise RegistryError("model_config needs n_items (the model has no n_items attribute)")
    try:
        config = dataclasses.asdict(build_model_config(model_name, model_config, int(n_items)))
        with torch.device("meta"):
            reference = build_model(model_name, config, int(n_items))
    except ValueError as exc:
        raise RegistryError(f"cannot publish: {exc}") from exc
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if expected != actual:
        missing, unexpected = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
        shapes = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
        raise RegistryError(
            f"cannot publish: the model does not match {model_name} built from model_config (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, other shapes {shapes[:5]}); pass the raw module "
            "(not a DDP or compiled wrapper) and its exact config"
        )
    return config


def load_weights(model: nn.Module, path: Path, what: str) -> None:
    """Load safetensors ``path`` into ``model``; every tensor must fit, else RegistryError naming the file."""
    try:
        weights.load_weights(model, path)
    except weights.WeightsError as exc:
        raise RegistryError(f"{exc}; the model is {what}") from exc


def read_run(run_dir: str | Path) -> RunArtifact:
    """The best checkpoint of a ``seekrec train`` run directory, ready to publish.

    Reads, through :class:`seekrec.training.run_dir.RunDir`, the resolved model, ``config.json`` (data
    manifest sha256), ``best/meta.json`` (validation metrics, stored as ``valid/<metric>``) and
    ``results.json`` (test metrics as ``test/<metric>``); the run's config.json travels along as the
    extra file ``run_config.json``, its catalog as ``catalog.json``. A run stopped before its end (no
    results.json) publishes its ``best/`` weights with validation metrics only, marked ``unfinished``.
    """
    from seekrec.training.run_dir import (  # lazy: keeps torch models off `list`
        RunDir,
        required,
    )

    run = RunDir(Path(run_dir))
    try:
        config, meta = run.read_config(), run.read_best_meta()
        spec = run.read_model()  # n_items from model.json: results.json is not needed
        model = run.load_best(spec.build())
        metrics = {f"valid/{k}": v for k, v in required(meta, "valid", run.best_meta_file).items()}
        if run.finished:
            metrics.update({f"test/{k}": v for k, v in required(run.read_results(), "metrics", run.results_file).items()})
        else:
            log.warning("%s: no results.json (the run stopped before its end): publishing best/ from epoch %s with "
                        "validation metrics only", run.path, meta.get("epoch"))
        data_spec = {"data_manifest_sha256": required(config, "data_manifest_sha256", run.config_file),
                     "data_source": config.get("data_source")}
    except ValueError as exc:  # RunDirError included: a missing file or field, weights that do not fit
        raise RegistryError(str(exc)) from exc
    return RunArtifact(
        model=model,
        model_name=spec.name,
        model_config=spec.config,
        metrics=metrics,
        data_spec=data_spec,
        extra={"run_dir": str(run.path.resolve()), "experiment": config.get("name"), "best_epoch": meta.get("epoch"),
               "best_step": meta.get("step"), **({} if run.finished else {"unfinished": True})},
        extra_files={"run_config.json": run.config_file.read_bytes(),
                     **({CATALOG_FILE: run.catalog_file.read_bytes()} if run.catalog_file.is_file() else {})},
    )


def format_versions(infos: Sequence[VersionInfo], metric_keys: Sequence[str] | None = None) -> str:
    """A fixed-width table for ``seekrec registry list``; ``*`` marks the current version.

    ``metric_keys`` defaults to the first three metrics of the newest version.
    """
    if not infos:
        return "no versions published"
    keys = list(metric_keys) if metric_keys is not None else list(infos[-1].metrics)[:3]
    header = ["", "version", "created", "model", "parent", *keys]
    rows = [["*" if i.is_current else "", i.version, i.created, i.model_name, i.parent or "-",
             *(_cell(i.metrics.get(k)) for k in keys)] for i in infos]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) if n < 5 else c.rjust(w) for n, (c, w) in enumerate(zip(r, widths))).rstrip()
              for r in rows]
    return "\n".join(lines)


def format_manifest(manifest: Mapping[str, Any]) -> str:
    """The manifest as indented JSON, for ``seekrec registry show``."""
    return json.dumps(manifest, indent=2)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


