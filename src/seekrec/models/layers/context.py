"""Event-time and action inputs for the sequence models (the inputs generative recommenders such as HSTU
feed beside item ids), shared by ``SASRec`` and ``DeepSeekRec``.

- token features (``ContextEmbedding``): summed into each token, an embedding of the log-bucketed gap
  to the previous event, of the log-bucketed gap from the event to the time its prediction is requested
  (``query_times``), and of the event's value (e.g. a rating) rounded to an int;
- attention biases (``RelativeAttentionBias``): per-head learned biases over the clipped relative position
  ``i - j`` and over the log-bucketed ``|t_i - t_j|``, added to the attention logits of every layer.

Everything is computed from the left-padded inputs and left-padding invariant: a token's features depend
only on its own and earlier real events, and relative positions / times do not see the padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

# defined beside the batches that carry it (data may not import models); the models' name for it is this one
from seekrec.data.sequences import SequenceContext

__all__ = ["CONTEXT_FLAGS", "ContextEmbedding", "ContextInputs", "RelativeAttentionBias", "SequenceContext", "action_bucket",
           "additive_mask", "context_modules", "log_bucket", "needs_context", "require_context", "validate_context_fields"]

CONTEXT_FLAGS = ("time_features", "action_features", "relative_time_bias")  # what needs a SequenceContext


@dataclass(kw_only=True)
class ContextInputs:
    """The event-time and action input fields of a sequence model config (``SASRecConfig``,
    ``DeepSeekRecConfig`` derive from it), all off by default; keyword-only, so they follow each
    config's own fields. The config's ``__post_init__`` calls ``validate_context_fields``."""

    time_features: bool = False
    action_features: bool = False
    n_action_buckets: int = 11
    relative_position_bias: bool = False
    relative_time_bias: bool = False
    n_time_buckets: int = 32

    @property
    def needs_context(self) -> bool:
        """Whether the model needs a ``SequenceContext`` (time_features, action_features or relative_time_bias)."""
        return needs_context(self)


def validate_context_fields(config: Any) -> None:
    """The shared ``__post_init__`` checks of the context fields of a model config (``SASRecConfig``,
    ``DeepSeekRecConfig``): ``n_action_buckets >= 2``, ``n_time_buckets >= 2``, the flags bools."""
    what = type(config).__name__
    for name in ("time_features", "action_features", "relative_position_bias", "relative_time_bias"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{what}.{name} must be true or false, got {getattr(config, name)!r}")
    for name in ("n_action_buckets", "n_time_buckets"):
        if getattr(config, name) < 2:
            raise ValueError(f"{what}.{name} must be >= 2, got {getattr(config, name)}")


def needs_context(config: Any) -> bool:
    """Whether a model with ``config`` needs a ``SequenceContext`` (any of ``CONTEXT_FLAGS`` set)."""
    return any(getattr(config, name) for name in CONTEXT_FLAGS)


def require_context(config: Any, input_ids: Tensor, context: SequenceContext | None) -> SequenceContext | None:
    """``context`` checked against ``input_ids`` when ``config`` needs one (ValueError naming the flags when it
    is missing, or lacks values for ``action_features``); None when the config needs none."""
    if not needs_context(config):
        return None
    flags = [name for name in CONTEXT_FLAGS if getattr(config, name)]
    if context is None:
        raise ValueError(f"{type(config).__name__} has {', '.join(flags)} set, so the model needs context= (a "
                         "SequenceContext of event times and values); pass one or turn those flags off")
    context.check(input_ids)
    if config.action_features and context.values is None:
        raise ValueError(f"{type(config).__name__}.action_features is set but the SequenceContext has no values; "
                         "pass the event values or turn action_features off")
    return context


def log_bucket(gaps: Tensor, n_buckets: int) -> Tensor:
    """``[...]`` seconds -> ``[...]`` int64 buckets: ``gap <= 0`` -> 0, else ``min(n_buckets - 1, 1 +
    floor(log2(gap)))``. Exact for gaps below 2**53 seconds (``frexp`` of a float64)."""
    gaps = gaps.to(torch.int64)
    _, exponent = torch.frexp(gaps.clamp(min=1).to(torch.float64))  # gap = m * 2**e, m in [0.5, 1)
    buckets = exponent.to(torch.int64).clamp(max=n_buckets - 1)  # 1 + floor(log2(gap)) = e
    return torch.where(gaps > 0, buckets, torch.zeros_like(buckets))


def action_bucket(values: Tensor, n_buckets: int) -> Tensor:
    """``[...]`` event values -> ``[...]`` int64: rounded to an int and clipped to ``0..n_buckets - 1`` (NaN -> 0)."""
    return torch.nan_to_num(values.float(), nan=0.0).round().clamp(0, n_buckets - 1).to(torch.int64)


class ContextEmbedding(nn.Module):
    """``mask [B, L], context -> [B, L, D]``: the sum of the enabled token features, zero at padding.

    ``time_features``: embeddings of ``log_bucket`` of the gap to the previous real event (index
    ``n_time_buckets`` for the first event of the window, which has none) and of the gap from the event
    to its query time. ``action_features``: an embedding of ``action_bucket(values)``.
    """

    def __init__(self, dim: int, *, time_features: bool, action_features: bool, n_time_buckets: int,
                 n_action_buckets: int, init_std: float = 0.02) -> None:
        super().__init__()
        if not (time_features or action_features):
            raise ValueError("ContextEmbedding needs time_features or action_features")
        self.n_time_buckets, self.n_action_buckets = n_time_buckets, n_action_buckets
        self.previous_gap = nn.Embedding(n_time_buckets + 1, dim) if time_features else None
        self.query_gap = nn.Embedding(n_time_buckets + 1, dim) if time_features else None
        self.action = nn.Embedding(n_action_buckets, dim) if action_features else None
        for table in (self.previous_gap, self.query_gap, self.action):
            if table is not None:
                nn.init.normal_(table.weight, std=init_std)

    def forward(self, mask: Tensor, context: SequenceContext) -> Tensor:
        none = self.n_time_buckets
        out: Tensor | None = None
        if self.previous_gap is not None and self.query_gap is not None:
            times = context.times.to(torch.int64)
            has_previous = torch.zeros_like(mask)
            has_previous[:, 1:] = mask[:, :-1] & mask[:, 1:]  # left padding: real before real
            previous = torch.zeros_like(times)
            previous[:, 1:] = times[:, 1:] - times[:, :-1]
            previous = torch.where(has_previous, log_bucket(previous, none), torch.full_like(times, none))
            query = torch.where(mask, log_bucket(context.query_times.to(torch.int64) - times, none),
                                torch.full_like(times, none))
            out = self.previous_gap(previous) + self.query_gap(query)
        if self.action is not None:
            if context.values is None:
                raise ValueError("action_features need SequenceContext.values; pass the event values")
            action = self.action(action_bucket(context.values, self.n_action_buckets))
            out = action if out is None else out + action
        assert out is not None  # the constructor requires a feature
        return out * mask.unsqueeze(-1).to(out.dtype)


class RelativeAttentionBias(nn.Module):
    """``mask [B, L], context -> [B or 1, H, L, L]`` float, an additive bias on the attention logits.

    ``position``: a per-head learned bias over the relative position ``i - j`` clipped to ``0..max_len - 1``.
    ``time``: a per-head learned bias over ``log_bucket(|t_i - t_j|)``. Entries that attention masks out
    (future keys, padding) get arbitrary finite values: callers combine the bias with their mask.
    """

    def __init__(self, n_heads: int, max_len: int, n_time_buckets: int, *, position: bool, time: bool,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if not (position or time):
            raise ValueError("RelativeAttentionBias needs position or time")
        self.max_len, self.n_time_buckets = max_len, n_time_buckets
        self.position = nn.Parameter(torch.randn(n_heads, max_len) * init_std) if position else None  # [H, L]
        self.time = nn.Parameter(torch.randn(n_heads, n_time_buckets) * init_std) if time else None  # [H, T]

    def forward(self, mask: Tensor, context: SequenceContext | None) -> Tensor:
        length = mask.shape[-1]
        bias: Tensor | None = None
        if self.position is not None:
            idx = torch.arange(length, device=mask.device)
            relative = (idx[:, None] - idx[None, :]).clamp(0, self.max_len - 1)  # [L, L], query i, key j
            bias = self.position[:, relative][None]  # [1, H, L, L]
        if self.time is not None:
            if context is None:
                raise ValueError("relative_time_bias needs a SequenceContext with event times")
            times = context.times.to(torch.int64)
            gaps = (times[:, :, None] - times[:, None, :]).abs()  # [B, L, L]
            time_bias = self.time[:, log_bucket(gaps, self.n_time_buckets)].transpose(0, 1)  # [B, H, L, L]
            bias = time_bias if bias is None else bias + time_bias
        assert bias is not None  # the constructor requires one of the two
        return bias


def context_modules(config: Any, *, init_std: float = 0.02) -> tuple[ContextEmbedding | None,
                                                                    RelativeAttentionBias | None]:
    """The token-feature and attention-bias modules a model ``config`` enables (None for each that it does not),
    from its ``dim``, ``n_heads``, ``max_len`` and context fields."""
    embedding = None
    if config.time_features or config.action_features:
        embedding = ContextEmbedding(config.dim, time_features=config.time_features,
                                     action_features=config.action_features, n_time_buckets=config.n_time_buckets,
                                     n_action_buckets=config.n_action_buckets, init_std=init_std)
    bias = None
    if config.relative_position_bias or config.relative_time_bias:
        bias = RelativeAttentionBias(config.n_heads, config.max_len, config.n_time_buckets,
                                     position=config.relative_position_bias, time=config.relative_time_bias,
                                     init_std=init_std)
    return embedding, bias


def additive_mask(allowed: Tensor, bias: Tensor, dtype: torch.dtype) -> Tensor:
    """``allowed [B, 1, L, L]`` bool and ``bias [B or 1, H, L, L]`` -> ``[B, H, L, L]`` float of ``dtype``: the
    bias where attention is allowed, ``finfo(dtype).min`` elsewhere (finite: no NaN on fully masked rows)."""
    return torch.where(allowed, bias.to(dtype), torch.finfo(dtype).min)
