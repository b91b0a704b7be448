"""Loading safetensors weights into a module, checked: every tensor present and of the right shape.

One loader for model versions, run directories, checkpoints and pipeline bundles, so that a file that
does not fit its model is always an error naming the file, never a half-loaded module.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn


class WeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the module; names the file."""


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``model`` (in place, returned for chaining); WeightsError if any tensor is
    missing, unexpected or of another shape."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: missing")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except SafetensorError as exc:  # not a safetensors file: truncated, overwritten
        raise WeightsError(f"{path}: unreadable ({exc})") from exc
    except RuntimeError as exc:  # a tensor of another shape
        raise WeightsError(f"{path}: does not fit the model ({exc})") from exc
    if missing or unexpected:
        raise WeightsError(f"{path}: does not fit the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return model
