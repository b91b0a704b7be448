"""INT8 dynamic quantization of a sequence model's user encoder, for CPU serving.

Dynamic quantization (``torch.ao.quantization.quantize_dynamic``, ``qint8``) stores each ``nn.Linear``'s
weights as int8 once and quantizes its input activations per call from their observed range: no
calibration data, and nothing to retrain. It runs on CPU only (fbgemm / x86 kernels).

What stays fp32, and why:

- every ``nn.Linear`` that ``encode_items`` runs (the side-feature projection): the item vectors the ANN
  index and the exact rescoring use stay the fp32 ones, so only the user side is approximate and an
  int8 encoder never moves an item;
- embedding tables, norms, rotary tables and the similarity: not ``nn.Linear``;
- DeepSeek-rec's routed experts: ``DeepseekV3Experts`` holds them as stacked 3-D weights applied with
  batched matmuls, which ``quantize_dynamic`` does not reach (most of an MoE layer's parameters);
- DeepSeek-rec's routers (``DeepseekV3TopkRouter``, a bare weight matrix): expert selection is a
  top-k over their logits, so they are better exact anyway.

So for SASRec the attention and feed-forward projections become int8; for DeepSeek-rec the multi-head
latent attention projections and the shared experts.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_MODES = ("none", "int8")


def item_side_linears(model: nn.Module) -> set[str]:
    """Names of the ``nn.Linear`` modules that ``model.encode_items`` runs (found by running it once)."""
    used: set[str] = set()
    names = {module: name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    hooks = [module.register_forward_hook(lambda mod, args, out: used.add(names[mod])) for module in names]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model.encode_items(torch.arange(min(2, int(model.n_items) + 1), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return used


def quantize_encoder(model: nn.Module) -> list[str]:
    """Replace the user encoder's ``nn.Linear`` layers of ``model`` (a CPU ``SequenceRecommender``) by
    dynamically quantized int8 ones, in place; returns the names of the layers quantized.

    Call it after computing the item embeddings the index needs (they are unaffected either way, see the
    module docstring). Raises ``ValueError`` for a model off the CPU or one without a linear layer to
    quantize."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU only; the model is on {device}: "
                         "serve with device cpu or quantize none")
    keep = item_side_linears(model)
    targets = {name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in keep}
    if not targets:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer in its user encoder to quantize; "
                         "serve it with quantize none")
    with warnings.catch_warnings():
        # torch.ao's eager quantization is marked deprecated in favour of torchao, which seekrec does not
        # depend on; it ships and works in the torch versions seekrec supports (tests hold it to fp32)
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        torch.ao.quantization.quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)
    return sorted(targets)
