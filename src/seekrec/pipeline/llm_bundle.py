"""An ``llm_rerank`` bundle: a sequence retriever and a fine-tuned LLM re-ranker, versioned as one unit.

::

    bundle/
      retriever.safetensors   the retriever's weights: the best checkpoint of the `seekrec train` run the
                              LLM was fine-tuned and its weight w chosen on (llm.json's retriever_run)
      catalog.json            that run's item catalog (raw ids, counts): the server's id map and fallback
      run_config.json         that run's config.json
      llm/                    the LLM run exported self-contained (``LLMReranker.export``): llm.json,
                              the model and tokenizer, items.json (the item texts its prompts render)
      llm_rerank.json         format, the retriever's model name and resolved config, R, w (written last)

Retriever and re-ranker travel together because the re-ranker's ``w`` weighs that retriever's logits
and it learnt to order that retriever's candidates; a registry version that paired it with another
retriever would serve an untested combination. The bundle is built under a temporary name and renamed
into place. A run whose prompts render ratings or recency is refused when the bundle is written and
when it is read: a server's queries carry item ids only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.io import atomic_write_json
from seekrec.registry import RegistryError
from seekrec.registry.artifacts import checked_config, load_weights, read_run

LLM_RERANK_KIND = "llm_rerank"  # the registry kind of a published bundle
LLM_RERANK_FILE = "llm_rerank.json"
LLM_RUN_FILE = "llm.json"  # what an LLM run directory records about itself (``llm.rerank.LLM_FILE``)
RETRIEVER_FILE = "retriever.safetensors"
RUN_CONFIG_FILE = "run_config.json"
LLM_DIR = "llm"
BUNDLE_FORMAT = 1


@dataclass
class LLMRerankBundle:
    """A read bundle: the retriever (eval mode, on the device asked for), its catalog, the exported LLM
    run directory (load it with ``LLMReranker.load``), R and the bundle's facts."""

    model: torch.nn.Module
    model_name: str
    model_config: dict[str, Any]
    catalog: Catalog
    llm_dir: Path
    n_candidates: int
    meta: dict[str, Any]


def is_llm_run(path: str | Path) -> bool:
    """Whether ``path`` is a fine-tuned LLM run directory (it holds ``llm.json``)."""
    return (Path(path) / LLM_RUN_FILE).is_file()


def check_servable(run: str | Path) -> Any:
    """The run's ``LLMRunInfo`` if its prompts need only item ids; else ``RegistryError`` naming the fields.

    Reads ``llm.json`` alone, so a run that cannot be served is refused before any model loads."""
    from seekrec.llm.prompts import PromptConfig
    from seekrec.llm.rerank import LLMRunInfo

    try:
        info = LLMRunInfo.read(run)
        needs = PromptConfig(**info.prompt).needs_context
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise RegistryError(f"{run}: not a readable LLM run ({exc})") from exc
    if needs:
        raise RegistryError(f"{Path(run) / LLM_RUN_FILE}: its prompts render {list(needs)}, but serving queries "
                            "carry item ids only (no ratings, no times); fine-tune with prompt.history_fields "
                            "limited to title, year and genres to serve it")
    return info


def write_llm_bundle(llm_run: str | Path, directory: str | Path, *, device: str = "cpu") -> Path:
    """Write the ``llm_rerank`` bundle of a fine-tuned LLM run (and its retriever run) to ``directory``."""
    from seekrec.llm.rerank import LLMReranker  # heavy: transformers

    info = check_servable(llm_run)
    retriever_run = Path(info.retriever_run)
    if not retriever_run.is_dir():
        raise RegistryError(f"{Path(llm_run) / LLM_RUN_FILE}: its retriever run {retriever_run} is not there; the "
                            "bundle needs the `seekrec train` run whose candidates the LLM was fine-tuned on")
    run = read_run(retriever_run)
    if CATALOG_FILE not in run.extra_files:
        raise RegistryError(f"{retriever_run}: no {CATALOG_FILE}; serving needs the item catalog that `seekrec "
                            "train` writes")
    n_items = int(run.model_config.get("n_items", getattr(run.model, "n_items", -1)))
    if n_items != info.n_items:
        raise RegistryError(f"{llm_run}: the LLM knows {info.n_items} items, its retriever {retriever_run} "
                            f"{n_items}; both must come from the same dataset")
    trained_on, retriever_data = info.data_manifest_sha256, run.data_spec.get("data_manifest_sha256")
    if trained_on is not None and retriever_data is not None and trained_on != retriever_data:
        raise RegistryError(f"{llm_run}: the LLM was fine-tuned on dataset {trained_on[:12]}..., its retriever "
                            f"{retriever_run} trained on {retriever_data[:12]}...; both must come from one dataset")
    config = checked_config(run.model, run.model_name, run.model_config)
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(run.model, str(tmp / RETRIEVER_FILE))
        (tmp / CATALOG_FILE).write_bytes(run.extra_files[CATALOG_FILE])
        (tmp / RUN_CONFIG_FILE).write_bytes(run.extra_files["run_config.json"])
        LLMReranker.load(llm_run, device=device).export(tmp / LLM_DIR)
        check_servable(tmp / LLM_DIR)  # what the server will read
        atomic_write_json(tmp / LLM_RERANK_FILE, {
            "format_version": BUNDLE_FORMAT,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "retriever": {"model_name": run.model_name, "model_config": config, "n_items": n_items,
                          "run": str(retriever_run.resolve()), "metrics": run.metrics, "data_spec": run.data_spec},
            "llm": {"run": str(Path(llm_run).resolve()), "kind": info.kind, "weight": info.weight,
                    "base_model": info.base_model, "task": info.task},
            "n_candidates": int(info.n_candidates),
            "n_items": n_items,
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_llm_bundle(directory: str | Path, *, device: str | torch.device = "cpu") -> LLMRerankBundle:
    """The retriever, catalog and LLM directory of a bundle; refuses a prompt that needs more than item ids
    before anything heavy loads."""
    from seekrec.models.factory import build_model  # lazy, as in registry.store

    root = Path(directory)
    path = root / LLM_RERANK_FILE
    if not path.is_file():
        raise RegistryError(f"{path}: missing; not an llm_rerank bundle (publish an LLM run with `seekrec registry "
                            "publish LLM_RUN`)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path}: not valid JSON ({exc})") from exc
    if meta.get("format_version") != BUNDLE_FORMAT:
        raise RegistryError(f"{path}: format_version {meta.get('format_version')!r} is not {BUNDLE_FORMAT}; publish "
                            "the LLM run again with this version of seekrec")
    check_servable(root / LLM_DIR)
    retriever = meta["retriever"]
    model = build_model(retriever["model_name"], retriever["model_config"], int(retriever["n_items"]))
    load_weights(model, root / RETRIEVER_FILE, f"{retriever['model_name']} built from {LLM_RERANK_FILE}")
    try:
        catalog = Catalog.from_bytes((root / CATALOG_FILE).read_bytes())
    except (OSError, ValueError, KeyError) as exc:
        raise RegistryError(f"{root / CATALOG_FILE}: unreadable catalog ({exc}); publish the LLM run again") from exc
    return LLMRerankBundle(model.to(device).eval(), retriever["model_name"], retriever["model_config"], catalog,
                           root / LLM_DIR, int(meta["n_candidates"]), meta)
