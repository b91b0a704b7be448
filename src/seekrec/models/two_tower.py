"""Two-tower retrieval (Yi et al. 2019; Covington et al. 2016): a user tower and an item tower map
features to L2-normalised D-dim vectors whose inner product, divided by a learned temperature, is
the retrieval score. Item vectors do not depend on the user, so the catalog is encoded once and
served from an inner-product (FAISS) index; only the user tower runs per request.

Cold start. An item with no interactions has an id row that training never touched. The item id's
table starts at zero (an unseen id is then exactly a missing id, 0) and during training the id is
replaced by 0 with probability ``id_dropout``, so the tower learns to place items from content alone
(categorical columns, text). A cold item gets a vector from its content, near items that share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.layers.block import TransformerBlock
from seekrec.models.layers.features import FeatureEmbedding, as_feature_schema
from seekrec.models.layers.masking import padding_mask
from seekrec.models.layers.mlp import ACTIVATION_KINDS, MLP

POOLING_KINDS = ("mean", "attention")


@dataclass
class TwoTowerConfig:
    """Two-tower hyper-parameters; ``user`` and ``item`` are the feature spec's schemas per side.

    ``embed_dim`` (E): width of each column embedding and of the sequence embedding; ``dim`` (D): the
    output vectors. ``sequence_pooling``: "mean" of the history's embeddings, or "attention" (one
    causal transformer block, read at the most recent item). ``recency_buckets``: ``log1p(days)`` is
    cut into that many equal buckets up to ``recency_max``, each with a learned embedding added to the
    history item's. ``item_id_column``: the item schema's id column (None: a content-only item tower).
    ``temperature`` is the initial value of the learned temperature, kept in ``[min_temperature,
    max_temperature]``.
    """

    user: FeatureSchema
    item: FeatureSchema
    dim: int = 64
    embed_dim: int = 32
    hidden_dims: tuple[int, ...] = (128,)
    activation: str = "relu"
    dropout: float = 0.1
    sequence_pooling: str = "attention"
    n_heads: int = 1
    recency_buckets: int = 8
    recency_max: float = 6.0
    item_id_column: str | None = "item_id"
    id_dropout: float = 0.1
    temperature: float = 0.05
    min_temperature: float = 0.01
    max_temperature: float = 1.0
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        self.user = as_feature_schema(self.user, "TwoTowerConfig.user")
        self.item = as_feature_schema(self.item, "TwoTowerConfig.item")
        self.hidden_dims = tuple(self.hidden_dims)  # JSON / TOML give lists
        for name in ("dim", "embed_dim", "n_heads", "recency_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"TwoTowerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden_dims):
            raise ValueError(f"TwoTowerConfig.hidden_dims must all be >= 1, got {self.hidden_dims}")
        if self.activation not in ACTIVATION_KINDS:
            raise ValueError(f"TwoTowerConfig.activation must be one of {ACTIVATION_KINDS}, got {self.activation!r}")
        for name in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TwoTowerConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.sequence_pooling not in POOLING_KINDS:
            raise ValueError(f"TwoTowerConfig.sequence_pooling must be one of {POOLING_KINDS}, "
                             f"got {self.sequence_pooling!r}")
        if self.sequence_pooling == "attention" and self.embed_dim % self.n_heads:
            raise ValueError(f"TwoTowerConfig.embed_dim={self.embed_dim} must be divisible by n_heads={self.n_heads}")
        if self.recency_max <= 0:
            raise ValueError(f"TwoTowerConfig.recency_max must be > 0 (log1p days), got {self.recency_max}")
        if not 0 < self.min_temperature <= self.temperature <= self.max_temperature:
            raise ValueError("TwoTowerConfig needs 0 < min_temperature <= temperature <= max_temperature, got "
                             f"{self.min_temperature}, {self.temperature}, {self.max_temperature}")
        item_columns = [name for name, _ in self.item.categorical]
        if self.item_id_column is not None and self.item_id_column not in item_columns:
            raise ValueError(f"TwoTowerConfig.item_id_column={self.item_id_column!r} is not a categorical column of "
                             f"the item schema {item_columns}; name the id column or set it to None")
        if self.item.sequence_len:
            raise ValueError("the item schema has a behaviour sequence; the item tower reads none, set its "
                             "sequence_len to 0")
        if not (self.user.categorical or self.user.dense or self.user.text_dim or self.user.sequence_len):
            raise ValueError("the user schema is empty: the user tower needs at least one feature or a sequence")


class TowerOutputs(NamedTuple):
    """``users [B, D]`` and ``items [N, D]`` (unit norm) and the scalar ``temperature``."""

    users: Tensor
    items: Tensor
    temperature: Tensor


class TwoTower(nn.Module):
    """User and item towers over ``FeatureBatch`` inputs; scores are ``users @ items.T / temperature``."""

    recency_edges: Tensor  # [R - 1] bucket boundaries of log1p(days)

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        user, item, width = config.user, config.item, config.embed_dim
        self.user_features = FeatureEmbedding(user, width)
        user_in = self.user_features.out_dim
        if user.sequence_len:
            self.sequence_embedding = nn.Embedding(user.n_items + 1, width, padding_idx=0)
            nn.init.normal_(self.sequence_embedding.weight, std=0.1)
            with torch.no_grad():
                self.sequence_embedding.weight[0].zero_()
            # bucket 0 is padding; real events fall in 1..R
            self.recency_embedding = nn.Embedding(config.recency_buckets + 1, width, padding_idx=0)
            edges = torch.linspace(0.0, config.recency_max, config.recency_buckets + 1)[1:-1]
            self.register_buffer("recency_edges", edges, persistent=False)
            self.sequence_block = None
            if config.sequence_pooling == "attention":
                self.sequence_block = TransformerBlock(width, config.n_heads, 2 * width, config.dropout)
            user_in += width
        zero_init = () if config.item_id_column is None else (config.item_id_column,)
        self.item_features = FeatureEmbedding(item, width, zero_init=zero_init)
        mlp = {"activation": config.activation, "dropout": config.dropout}
        self.user_mlp = MLP(user_in, config.hidden_dims, config.dim, **mlp)
        self.item_mlp = MLP(self.item_features.out_dim, config.hidden_dims, config.dim, **mlp)
        # shape [1], not a scalar: FSDP shards parameters on dim 0 (checkpoints with a scalar still load)
        self.log_temperature = nn.Parameter(torch.full((1,), math.log(config.temperature)),
                                            requires_grad=config.learn_temperature)

    def fsdp_units(self) -> list[nn.Module]:
        """``ShardableModel``: every embedding table (feature columns of both towers, the history's items and
        recency buckets) and the history's transformer block; the MLPs and temperature stay in the root unit."""
        tables = [*self.user_features.embeddings.values(), *self.item_features.embeddings.values()]
        if self.config.user.sequence_len:
            tables += [self.sequence_embedding, self.recency_embedding]
            if self.sequence_block is not None:
                tables.append(self.sequence_block)
        return tables

    @property
    def temperature(self) -> Tensor:
        """Scalar, ``exp(log_temperature)`` clamped to the configured range (a floor keeps logits bounded)."""
        return self.log_temperature.exp().clamp(self.config.min_temperature, self.config.max_temperature)[0]

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        key = prefix + "log_temperature"
        if key in state_dict and state_dict[key].dim() == 0:  # weights saved when it was a scalar
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, user: FeatureBatch, item: FeatureBatch) -> TowerOutputs:
        """Both towers in one call (what a DDP-wrapped model needs): ``user [B]``, ``item [N]`` rows."""
        return TowerOutputs(self.encode_users(user), self.encode_items(item), self.temperature)

    def encode_users(self, user: FeatureBatch) -> Tensor:
        """``user`` with B rows -> ``[B, D]`` unit vectors."""
        parts = [self.user_features(user)]  # [B, U]
        if self.config.user.sequence_len:
            if user.sequence is None:
                raise ValueError("the user schema has a behaviour sequence but the batch's sequence is None")
            parts.append(self._pool_sequence(user.sequence, user.recency))  # [B, E]
        return F.normalize(self.user_mlp(torch.cat(parts, dim=-1)), dim=-1)

    def encode_items(self, item: FeatureBatch) -> Tensor:
        """``item`` with N rows -> ``[N, D]`` unit vectors. In training the id is dropped (set to 0) per
        row with probability ``id_dropout``; pass id 0 for an item never seen in training."""
        column = self.config.item_id_column
        if self.training and self.config.id_dropout > 0 and column is not None:
            ids = item.categorical[column]  # [N, 1]
            drop = torch.rand(ids.shape[0], 1, device=ids.device) < self.config.id_dropout
            item = replace(item, categorical={**item.categorical, column: ids.masked_fill(drop, 0)})
        return F.normalize(self.item_mlp(self.item_features(item)), dim=-1)

    @torch.no_grad()
    def encode_catalog(self, catalog: FeatureBatch, *, chunk_size: int = 4096) -> Tensor:
        """Every row of ``catalog`` (N items) -> ``[N, D]``, ``chunk_size`` rows at a time, for the
        ANN index. Call in eval mode, so no id is dropped."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n_rows = len(catalog)
        device = self.log_temperature.device
        chunks = [
            self.encode_items(catalog.index(torch.arange(start, min(start + chunk_size, n_rows))).to(device))
            for start in range(0, n_rows, chunk_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.config.dim, device=device)

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """``users [B, D], items [N, D] -> [B, N]`` logits; the ranking is that of the inner product."""
        return users @ items.T / self.temperature

    def _pool_sequence(self, sequence: Tensor, recency: Tensor | None) -> Tensor:
        """``sequence [B, L]`` (left-padded ids), ``recency [B, L]`` -> ``[B, E]``; zero for an empty history."""
        mask = padding_mask(sequence)  # [B, L]
        x = self.sequence_embedding(sequence)  # [B, L, E], zero at padding
        if recency is not None:
            buckets = torch.bucketize(recency.float(), self.recency_edges) + 1  # [B, L] in 1..R
            x = x + self.recency_embedding(buckets.masked_fill(~mask, 0))
        if self.sequence_block is not None:
            # causal block, so the last position (the most recent event under left padding) sees all
            return self.sequence_block(x, mask)[:, -1]
        weights = mask.to(x.dtype)
        return (x * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
