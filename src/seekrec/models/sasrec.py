"""SASRec (Kang & McAuley, 2018): self-attentive sequential recommendation.

Follows the paper and the pmixer/SASRec.pytorch reimplementation: scaled item embedding + learned
positions, a stack of causal self-attention + point-wise FFN blocks (pre- or post-norm), a final
LayerNorm, and scores against the same item table used at the input. Two deliberate changes:
positions count from each sequence's first real item (so left padding never shifts them) and keys
at padded positions are masked in attention.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seekrec.models.layers.block import TransformerBlock
from seekrec.models.layers.embeddings import SequenceEmbedding, grow_embedding
from seekrec.models.layers.masking import padding_mask
from seekrec.models.layers.norms import NORM_KINDS, build_norm
from seekrec.models.layers.similarity import SIMILARITY_KINDS, Similarity


@dataclass
class SASRecConfig:
    """SASRec hyper-parameters.

    ``ffn_dim=None`` uses ``dim`` (the paper's D -> D point-wise FFN). ``temperature`` only applies
    to ``similarity="cosine"``. ``init`` "xavier" is the xavier-normal init of the reference code.
    """

    n_items: int
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 1
    max_len: int = 200
    dropout: float = 0.2
    ffn_dim: int | None = None
    norm_first: bool = True
    norm: str = "layernorm"
    norm_eps: float = 1e-8
    similarity: str = "dot"
    temperature: float = 0.05
    init: str = "xavier"

    def __post_init__(self) -> None:
        for name in ("n_items", "dim", "n_layers", "n_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"SASRecConfig.dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.ffn_dim is not None and self.ffn_dim < 1:
            raise ValueError(f"SASRecConfig.ffn_dim must be >= 1 or None, got {self.ffn_dim}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"SASRecConfig.norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"SASRecConfig.norm_eps must be > 0, got {self.norm_eps}")
        if self.similarity not in SIMILARITY_KINDS:
            raise ValueError(f"SASRecConfig.similarity must be one of {SIMILARITY_KINDS}, got {self.similarity!r}")
        if self.temperature <= 0:
            raise ValueError(f"SASRecConfig.temperature must be > 0, got {self.temperature}")
        if self.init not in ("xavier", "default"):
            raise ValueError(f"SASRecConfig.init must be 'xavier' or 'default', got {self.init!r}")


class SASRec(nn.Module):
    """Causal self-attention over item sequences; see ``SequenceRecommender`` for the API."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.n_items = config.n_items
        self.embedding = SequenceEmbedding(config.n_items, config.dim, config.max_len, config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.dim,
                config.n_heads,
                config.ffn_dim or config.dim,
                config.dropout,
                norm_first=config.norm_first,
                norm=config.norm,
                eps=config.norm_eps,
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = build_norm(config.norm, config.dim, config.norm_eps)
        self.similarity = Similarity(config.similarity, config.temperature)
        self.activation_checkpointing = False
        if config.init == "xavier":
            self._xavier_init()

    @torch.no_grad()
    def _xavier_init(self) -> None:
        # The reference code xavier-inits every matrix; padding rows stay zero so padding is inert.
        for param in self.parameters():
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
        self.embedding.item_table.weight[0].zero_()
        self.embedding.position_table.weight[0].zero_()

    def forward(self, input_ids: Tensor) -> Tensor:
        """``input_ids [B, L] -> hidden [B, L, D]``; zero at padded positions."""
        mask = padding_mask(input_ids)  # [B, L]
        x = self.embedding(input_ids)  # zero at padding: both tables have a zero padding row
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, mask, use_reentrant=False)  # recompute in backward: less memory
            else:
                x = block(x, mask)
        return self.final_norm(x) * mask.unsqueeze(-1).to(x.dtype)

    def grow_items(self, n_items: int) -> None:
        """Extend the item table to ids ``1..n_items`` for items first seen online.

        Parameters are replaced, so an optimizer over the old ones must be rebuilt.
        """
        self.embedding.item_table = grow_embedding(self.embedding.item_table, n_items + 1)
        self.n_items = n_items
        self.config = dataclasses.replace(self.config, n_items=n_items)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory: keep only block inputs and recompute activations in backward."""
        self.activation_checkpointing = enabled

    def encode_users(self, input_ids: Tensor) -> Tensor:
        """``[B, L] -> [B, D]``: the hidden state at index -1 (the most recent item, left padding).

        Equal to ``forward(input_ids)[:, -1]``, but the final block computes only that position: at
        serving batch sizes this saves about a third of the forward pass."""
        mask = padding_mask(input_ids)  # [B, L]
        x = self.embedding(input_ids)
        for block in self.blocks[:-1]:
            x = block(x, mask)
        x = self.blocks[-1](x, mask, last_only=True)  # [B, 1, D]
        return (self.final_norm(x) * mask[:, -1:].unsqueeze(-1).to(x.dtype))[:, 0]

    def encode_items(self, ids: Tensor) -> Tensor:
        """``[...] -> [..., D]``: rows of the shared input item table (unscaled)."""
        return self.embedding.item_table(ids)

    def score_all(self, input_ids: Tensor) -> Tensor:
        """``[B, L] -> [B, N + 1]`` scores of every item id; column 0 is padding."""
        all_ids = torch.arange(self.n_items + 1, device=input_ids.device)
        return self.similarity.matrix(self.encode_users(input_ids), self.encode_items(all_ids))
