"""Probability calibration of CTR logits: Platt scaling and temperature scaling.

A ranker trained on sampled negatives (or re-weighted data) ranks well but its ``sigmoid(logit)`` is
not the click probability. ``p = sigmoid(scale * logit + bias)`` with ``scale, bias`` fitted on held-out
(validation) data by minimising log loss fixes that without changing the ranking (for scale > 0).
Temperature scaling fits only ``scale`` (bias 0). The fit is convex, solved by L-BFGS on float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit
from torch import Tensor

CALIBRATION_METHODS = ("platt", "temperature")


@dataclass(frozen=True)
class Calibrator:
    """``logits -> sigmoid(scale * logits + bias)``; the identity map is ``scale=1, bias=0``."""

    scale: float = 1.0
    bias: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and math.isfinite(self.bias)):
            raise ValueError(f"Calibrator scale and bias must be finite, got {self.scale}, {self.bias}")

    def __call__(self, logits: Tensor) -> Tensor:
        """Calibrated probabilities, same shape as ``logits``."""
        return torch.sigmoid(logits * self.scale + self.bias)

    def calibrated_logits(self, logits: Tensor) -> Tensor:
        return logits * self.scale + self.bias

    @classmethod
    def fit(cls, logits: Tensor | np.ndarray, labels: Tensor | np.ndarray, *, method: str = "platt") -> Calibrator:
        """Minimise the mean log loss of ``labels`` (0/1) under the calibrated ``logits`` (both ``[M]``).

        Fit on validation data, never on the data the model was trained on (its logits are over-confident there).
        """
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}")
        x = _as_float64(logits)
        y = _as_float64(labels)
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"logits {x.shape} and labels {y.shape} must be non-empty and of equal length")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 0 or 1")
        if not np.all(np.isfinite(x)):
            raise ValueError("logits must be finite")
        with_bias = method == "platt"

        def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
            z = params[0] * x + (params[1] if with_bias else 0.0)
            loss = np.mean(np.logaddexp(0.0, z) - y * z)  # -log sigmoid(z) for y=1, -log(1 - sigmoid(z)) for y=0
            residual = (expit(z) - y) / len(x)  # d loss / d z
            grad = np.array([np.sum(residual * x), np.sum(residual) if with_bias else 0.0])
            return float(loss), grad

        result = minimize(loss_and_grad, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        if not result.success:
            raise RuntimeError(f"calibration fit did not converge: {result.message}")
        scale, bias = (float(v) for v in result.x)
        return cls(scale, bias if with_bias else 0.0)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready ``{"scale": ..., "bias": ...}``."""
        return {"scale": self.scale, "bias": self.bias}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibrator:
        unknown = sorted(set(data) - {"scale", "bias"})
        if unknown:
            raise ValueError(f"unknown calibrator keys {unknown}; expected 'scale' and 'bias'")
        return cls(float(data.get("scale", 1.0)), float(data.get("bias", 0.0)))


def _as_float64(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).ravel()
