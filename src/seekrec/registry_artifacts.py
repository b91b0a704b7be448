"""What goes into the model registry and how it is shown: version ids, the checks a model passes
before it is published, reading a ``seekrec train`` run directory, and the text the CLI prints.

Models come from two sources: a live module with its model config (the online trainer) and the
best checkpoint of a run directory. Both are checked here so that a version that could not be
loaded later is refused at publish time, not discovered by a server at load time.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_model
from torch import nn

from seekrec.data.vocab import CATALOG_FILE

RUN_WEIGHTS = Path("best") / "model.safetensors"
_VERSION_RE = re.compile(r"v?(\d+)")


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


def checked_config(model: nn.Module, model_name: str, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The full resolved config of ``model`` (every default filled in, so a later change of a default
    cannot alter a stored model), after checking that its state dict matches a model built from it.

    The reference model is built on the meta device: no memory and no initialisation cost.
    """
    from seekrec.models.factory import build_model, build_model_config  # lazy: keeps transformers off `list`

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
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise RegistryError(f"{path}: weights do not fit {what}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def read_run(run_dir: str | Path) -> RunArtifact:
    """The best checkpoint of a ``seekrec train`` run directory, ready to publish.

    Reads ``config.json`` (model section, data manifest sha256), ``best/meta.json`` (validation
    metrics, stored as ``valid/<metric>``) and ``results.json`` (test metrics as ``test/<metric>``,
    n_items); the run's config.json travels along as the extra file ``run_config.json``.
    """
    from seekrec.models.factory import build_model

    run = Path(run_dir)
    config_path, meta_path, results_path = run / "config.json", run / "best" / "meta.json", run / "results.json"
    config, meta, results = read_json(config_path), read_json(meta_path), read_json(results_path)
    weights = run / RUN_WEIGHTS
    if not weights.is_file():
        raise RegistryError(f"{weights}: missing; train the run until it validates at least once")
    params = dict(required_field(config, "model", config_path))
    name = params.pop("name")
    use_side = params.pop("use_item_features", False)
    # the resolution train_experiment applies; config.json records the section, not the result
    params.setdefault("max_len", required_field(config, "data", config_path)["max_len"])
    if use_side:
        params["n_side_features"] = _tensor_shape(weights, "item_features")[1]
    params["n_items"] = int(required_field(results, "n_items", results_path))
    try:
        model = build_model(name, params, params["n_items"])
    except ValueError as exc:
        raise RegistryError(f"{config_path}: {exc}") from exc
    load_weights(model, weights, f"the model in {config_path}")
    metrics = {f"valid/{k}": v for k, v in required_field(meta, "valid", meta_path).items()}
    metrics.update({f"test/{k}": v for k, v in required_field(results, "metrics", results_path).items()})
    return RunArtifact(
        model=model,
        model_name=name,
        model_config=params,
        metrics=metrics,
        data_spec={"data_manifest_sha256": required_field(config, "data_manifest_sha256", config_path),
                   "data_source": config.get("data_source")},
        extra={"run_dir": str(run.resolve()), "experiment": config.get("name"), "best_epoch": meta.get("epoch"),
               "best_step": meta.get("step")},
        extra_files={"run_config.json": config_path.read_bytes(),
                     **({CATALOG_FILE: (run / CATALOG_FILE).read_bytes()} if (run / CATALOG_FILE).is_file() else {})},
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


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; RegistryError naming the file when it is missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(doc, dict):
        raise RegistryError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def required_field(doc: Mapping[str, Any], key: str, path: Path) -> Any:
    """``doc[key]``, or RegistryError naming ``path`` and the missing key."""
    if key not in doc:
        raise RegistryError(f"{path}: no {key!r} field; was it written by `seekrec train`?")
    return doc[key]


def _tensor_shape(path: Path, name: str) -> list[int]:
    with safe_open(str(path), framework="pt") as fh:
        if name not in fh.keys():
            raise RegistryError(f"{path}: has no tensor {name!r}, but the run config says it uses item features")
        return list(fh.get_slice(name).get_shape())
