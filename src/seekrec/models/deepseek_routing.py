"""Observing and balancing DeepSeek-V3 expert routing from outside the transformers modules.

Forward hooks on each ``DeepseekV3TopkRouter`` (the ``gate`` of a ``DeepseekV3MoE``) read what it
returns, ``(router_logits [T, E], topk_weights [T, K], topk_indices [T, K])`` with T = B * L
tokens, and keep only real (non-padding) tokens. From that we derive

* expert load: the share of routing slots each expert received (sums to 1 per layer);
* DeepSeek-V3's complementary sequence-wise balance loss (optional, tiny weight in the paper);
* the auxiliary-loss-free balancing step: ``bias += speed * sign(mean_load - load)`` on the
  router's ``e_score_correction_bias``, which only affects which experts are *chosen*, never the
  gating weights. transformers computes no balance loss for DeepSeek-V3 and never updates that
  bias, so both live here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class _GateHook:
    """Forward hook of one router. A small object rather than a closure so that ``copy.deepcopy``
    and pickling of the model copy it together with its monitor (a closure would keep feeding the
    original model's monitor)."""

    def __init__(self, monitor: RouterMonitor, name: str) -> None:
        self.monitor = monitor
        self.name = name

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        self.monitor.record(self.name, module.training, output)


class RouterMonitor:
    """Hooks on named router modules; see the module docstring.

    ``begin(mask)`` must be called with the ``[B, L]`` real-token mask before each backbone
    forward. Counts are accumulated in ``pending_counts`` for training-mode forwards with gradients
    enabled (so evaluation never moves the bias) until ``update_bias`` consumes them; with gradient
    accumulation the bias update therefore sees all micro-batches. Activation checkpointing re-runs
    the routers during backward, doubling every count of a layer: proportions, and so the sign-based
    bias update, are unchanged.
    With ``record_routing`` the router logits of the last forward are kept for the balance loss.
    """

    def __init__(self, gates: Mapping[str, nn.Module], n_experts: int, top_k: int) -> None:
        self.gates = gates
        self.n_experts = n_experts
        self.top_k = top_k
        self.record_routing = False
        self._mask: Tensor | None = None  # [B, L] bool
        self.last_counts: dict[str, Tensor] = {}  # name -> [E] float, last forward
        self.pending_counts: dict[str, Tensor] = {}  # name -> [E] float, since last bias update
        self._routing: dict[str, tuple[Tensor, Tensor]] = {}  # name -> (logits [T, E], indices [T, K])
        for name, gate in gates.items():
            gate.register_forward_hook(_GateHook(self, name))

    def begin(self, mask: Tensor) -> None:
        """Declare the real-token mask ``[B, L]`` of the forward that is about to run."""
        self._mask = mask
        self._routing = {}

    def record(self, name: str, training: bool, output: tuple[Tensor, Tensor, Tensor]) -> None:
        """Store what router ``name`` returned: ``(router_logits [T, E], weights [T, K], indices [T, K])``."""
        router_logits, _, indices = output
        real = self._token_mask(indices.shape[0], indices.device)  # [T]
        # one_hot + masked sum instead of boolean indexing + bincount: no host sync on GPU
        chosen = F.one_hot(indices, self.n_experts).sum(dim=1)  # [T, E]
        counts = (chosen * real[:, None]).sum(dim=0).to(torch.float32).detach()  # [E]
        self.last_counts[name] = counts
        if training and torch.is_grad_enabled():
            previous = self.pending_counts.get(name)
            self.pending_counts[name] = counts if previous is None else previous + counts
        if self.record_routing:
            self._routing[name] = (router_logits, indices)

    def _token_mask(self, n_tokens: int, device: torch.device) -> Tensor:
        if self._mask is None or self._mask.numel() != n_tokens:
            return torch.ones(n_tokens, dtype=torch.long, device=device)
        return self._mask.reshape(-1).to(device=device, dtype=torch.long)

    def expert_load(self) -> dict[str, list[float]]:
        """Per layer, the share of real tokens' routing slots each expert got in the last forward."""
        return {name: (c / c.sum().clamp(min=1.0)).tolist() for name, c in self.last_counts.items()}

    def max_load_ratio(self) -> Tensor:
        """Largest ``max_expert_share / mean_share`` over layers: 1 = balanced, E / K = collapsed."""
        ratios = [c.max() / c.mean().clamp(min=1e-12) for c in self.last_counts.values()]
        return torch.stack(ratios).max() if ratios else torch.zeros(())

    def sequence_balance_loss(self) -> Tensor:
        """DeepSeek-V3's sequence-wise balance loss summed over MoE layers, with gradients.

        Per sequence of T real tokens: ``sum_i f_i * P_i`` with ``f_i = E / (K T) * #(tokens routed
        to i)`` and ``P_i`` the mean over tokens of the normalised affinity ``s_i / sum_j s_j``
        (``s = sigmoid(router_logits)``); averaged over non-empty sequences. Equals 1 when balanced.
        """
        if self._mask is None or not self._routing:
            raise RuntimeError("no routing recorded: set record_routing and run a forward first")
        mask = self._mask.to(torch.float32)  # [B, L]
        batch, length = mask.shape
        tokens = mask.sum(dim=1)  # [B]
        denom = tokens.clamp(min=1.0)[:, None]  # [B, 1]
        non_empty = (tokens > 0).to(torch.float32)  # [B]
        total = mask.new_zeros(())
        for logits, indices in self._routing.values():
            scores = logits.sigmoid().view(batch, length, self.n_experts)  # [B, L, E]
            scores = scores / scores.sum(dim=-1, keepdim=True)
            p = (scores * mask[..., None]).sum(dim=1) / denom  # [B, E]
            chosen = F.one_hot(indices, self.n_experts).sum(dim=1).view(batch, length, self.n_experts)
            f = (chosen * mask[..., None]).sum(dim=1) * self.n_experts / (self.top_k * denom)  # [B, E]
            per_sequence = (f * p).sum(dim=-1)  # [B]
            total = total + (per_sequence * non_empty).sum() / non_empty.sum().clamp(min=1.0)
        return total

    @torch.no_grad()
    def update_bias(self, speed: float) -> None:
        """``bias += speed * sign(mean_load - load)`` per layer from the pending counts, then reset.

        Overloaded experts get a lower bias (chosen less), underloaded ones a higher bias. Under
        torch.distributed the counts are summed over ranks first so every rank applies the same step.
        """
        for name, gate in self.gates.items():
            counts = self.pending_counts.pop(name, None)
            if counts is None:
                continue
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            bias = cast(Tensor, gate.e_score_correction_bias)
            bias.add_(speed * torch.sign(counts.mean() - counts).to(bias.dtype))
