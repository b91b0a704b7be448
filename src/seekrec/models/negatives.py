"""Negative item samplers for sampled losses; every draw takes an explicit ``torch.Generator``.

Besides the ids, a sampler reports ``log Q(item)``, the log-probability of drawing that item in
one draw, which losses subtract from logits to correct the sampling bias (log-Q correction).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SAMPLER_KINDS = ("uniform", "popularity")


class NegativeSampler(nn.Module):
    """Draws item ids from ``1..N`` uniformly or proportionally to popularity.

    Popularity uses add-one smoothing, ``Q(i) = (count_i + 1) / (sum + N)``, so every item stays
    reachable and ``log Q`` is finite for any positive. Draws use inverse-CDF sampling (float64
    CDF), which has no category limit, unlike ``torch.multinomial``.
    """

    cdf: Tensor  # [N] float64, cumulative draw probabilities of items 1..N
    log_q_table: Tensor  # [N + 1] float32, log Q per id; -inf for padding

    def __init__(self, kind: str, n_items: int, *, item_counts: Tensor | None = None) -> None:
        super().__init__()
        if kind not in SAMPLER_KINDS:
            raise ValueError(f"unknown sampler {kind!r}; use one of {SAMPLER_KINDS}")
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.kind = kind
        self.n_items = n_items
        if kind == "uniform":
            if item_counts is not None:
                raise ValueError("item_counts given to the uniform sampler; use sampler='popularity' or drop them")
            weights = torch.ones(n_items, dtype=torch.float64)
        else:
            if item_counts is None:
                raise ValueError("the popularity sampler needs item_counts: a [n_items + 1] tensor of counts")
            if tuple(item_counts.shape) != (n_items + 1,):
                raise ValueError(
                    f"item_counts must have shape [{n_items + 1}] (index 0 = padding), got {list(item_counts.shape)}"
                )
            if (item_counts < 0).any():
                raise ValueError("item_counts must be non-negative")
            weights = item_counts[1:].detach().to(torch.float64).cpu() + 1.0
        probs = weights / weights.sum()  # [N] for items 1..N
        log_q = torch.cat([torch.full((1,), float("-inf"), dtype=torch.float64), probs.log()])
        self.register_buffer("cdf", probs.cumsum(0), persistent=False)  # [N]
        self.register_buffer("log_q_table", log_q.to(torch.float32), persistent=False)  # [N + 1]

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Ids ``shape`` drawn i.i.d. with replacement, on the generator's device."""
        if generator is None:
            raise ValueError("negative sampling needs an explicit torch.Generator for reproducibility")
        device = generator.device
        if self.kind == "uniform":
            return torch.randint(1, self.n_items + 1, shape, generator=generator, device=device)
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
        cdf = self.cdf.to(device)
        idx = torch.searchsorted(cdf, u, right=True).clamp(max=self.n_items - 1)
        return idx + 1

    def log_q(self, ids: Tensor) -> Tensor:
        """``ids [...] -> [...]`` log-probability of drawing each id in one draw."""
        return self.log_q_table.to(ids.device)[ids]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, n_items={self.n_items}"
