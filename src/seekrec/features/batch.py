"""``FeatureBatch`` and ``FeatureSchema``: the contract between feature columns and the models.

A fitted feature spec turns raw rows (offline tables or one online request) into a ``FeatureBatch`` per
side (``user``, ``item``); models size their embeddings from the matching ``FeatureSchema`` and never
see column objects, vocabularies or text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureSchema:
    """What a model needs to build its input layers for one side.

    ``categorical``: ``(name, cardinality)`` per column; ids are ``0..cardinality-1`` with 0 meaning
    missing/padding (the OOV bucket, when a column has one, is id 1). ``dense``: names of float columns
    (already scaled). ``text_dim``: width of the text embedding (0: no text). ``sequence_len``: length of
    the behaviour sequence (0: none) over item ids ``1..n_items``.
    """

    categorical: tuple[tuple[str, int], ...] = ()
    dense: tuple[str, ...] = ()
    text_dim: int = 0
    sequence_len: int = 0
    n_items: int = 0

    def __post_init__(self) -> None:
        for name, cardinality in self.categorical:
            if cardinality < 2:
                raise ValueError(f"categorical column {name!r} needs cardinality >= 2 (0 is missing), got {cardinality}")
        if self.text_dim < 0 or self.sequence_len < 0 or self.n_items < 0:
            raise ValueError("text_dim, sequence_len and n_items must be >= 0")
        if self.sequence_len and self.n_items < 1:
            raise ValueError("a schema with a sequence needs n_items >= 1")


@dataclass
class FeatureBatch:
    """Features of ``B`` rows of one side.

    ``categorical[name]``: ``[B, M]`` long ids, ``M = 1`` for single-valued columns and the padded
    width for multi-valued ones (genres), 0 = padding. ``dense``: ``[B, F]`` float in schema order.
    ``text``: ``[B, T]`` float or None. ``sequence``: ``[B, L]`` item ids left-padded with 0, oldest
    first; ``recency``: ``[B, L]`` float, ``log1p`` of days between each sequence event and the row's
    time (0 at padding).
    """

    categorical: dict[str, Tensor] = field(default_factory=dict)
    dense: Tensor | None = None
    text: Tensor | None = None
    sequence: Tensor | None = None
    recency: Tensor | None = None

    def __len__(self) -> int:
        for value in (*self.categorical.values(), self.dense, self.text, self.sequence):
            if value is not None:
                return int(value.shape[0])
        return 0

    def to(self, device: torch.device | str) -> FeatureBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return replace(self, categorical={k: v.to(device, non_blocking=True) for k, v in self.categorical.items()},
                       dense=move(self.dense), text=move(self.text), sequence=move(self.sequence),
                       recency=move(self.recency))

    def index(self, rows: Tensor) -> FeatureBatch:
        """The rows ``rows`` (``[B']`` long) of this batch, e.g. to gather item features by id."""
        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows]

        return FeatureBatch({k: v[rows] for k, v in self.categorical.items()}, take(self.dense), take(self.text),
                            take(self.sequence), take(self.recency))
