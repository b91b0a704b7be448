"""The interface every next-item sequence model implements, so losses, the task, evaluation and
serving can work with any of them without knowing which one it is."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from seekrec.models.layers.context import SequenceContext
from seekrec.models.layers.similarity import Similarity


@runtime_checkable
class SequenceRecommender(Protocol):
    """A causal model over left-padded item sequences ``[B, L]`` (0 = padding, items 1..N).

    ``context``: the events' times, query times and values ``[B, L]`` (``SequenceContext``), required by a
    model whose ``config.needs_context`` (event-time / action inputs) and ignored by the others.
    """

    n_items: int
    similarity: Similarity

    def forward(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, L, D]`` hidden states; position t summarises items up to t."""
        ...

    def encode_users(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, D]``: hidden state at the last (most recent) position."""
        ...

    def encode_items(self, ids: Tensor) -> Tensor:
        """``[...] -> [..., D]`` item embeddings on the output side."""
        ...

    def score_all(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, N + 1]`` next-item scores; column 0 is padding (callers mask it)."""
        ...


@runtime_checkable
class AuxiliaryOutputs(Protocol):
    """Optional: a model that adds a regulariser to the loss and reports its own statistics."""

    def auxiliary_loss(self) -> Tensor:
        """Scalar computed from the last forward (0 when disabled); added to the task loss."""
        ...

    def auxiliary_stats(self) -> dict[str, Tensor]:
        """Detached scalars about the last forward, for logging."""
        ...


@runtime_checkable
class ShardableModel(Protocol):
    """Optional: a model that names its FSDP units, so the trainer can shard any model without knowing it.

    ``fsdp_units()`` lists the submodules that ``train.strategy = "fsdp"`` shards as their own units: each
    transformer block (its weights gathered just before it runs and freed after) and each embedding
    table (often the largest tensors of a recommender). Everything else is sharded with the model as
    one root unit. Contract: a unit's parameters are only used inside a call of that unit (never read
    directly by its parent), because FSDP gathers them in the unit's forward hooks.

    A model whose task calls another method instead of ``forward`` (DIN's ``score_candidates``) lists it
    in a class attribute ``fsdp_forward_methods``, so that method gathers the root's weights too.
    """

    def fsdp_units(self) -> list[nn.Module]: ...
