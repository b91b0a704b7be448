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
from seekrec.models.layers.context import (
    ContextInputs,
    SequenceContext,
    context_modules,
    require_context,
    validate_context_fields,
)
from seekrec.models.layers.embeddings import SequenceEmbedding, grow_embedding
from seekrec.models.layers.masking import padding_mask
from seekrec.models.layers.norms import NORM_KINDS, build_norm
from seekrec.models.layers.side_features import ItemSideFeatures
from seekrec.models.layers.similarity import SIMILARITY_KINDS, Similarity


@dataclass
class SASRecConfig(ContextInputs):
    """SASRec hyper-parameters.

    ``ffn_dim=None`` uses ``dim`` (the paper's D -> D point-wise FFN). ``temperature`` only applies
    to ``similarity="cosine"``. ``init`` "xavier" is the xavier-normal init of the reference code.

    ``time_features``, ``action_features``, ``relative_position_bias`` and ``relative_time_bias`` (all
    off by default) are the event-time and action inputs of ``models.layers.context``; all but the
    position bias need ``context=`` (``needs_context``).

    ``n_side_features`` G > 0 adds to each item's embedding, at the input and the output, the mean
    embedding of its active side features (a ``[N + 1, G]`` multi-hot buffer; ``models.layers.side_features``).
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
    n_side_features: int = 0

    def __post_init__(self) -> None:
        for name in ("n_items", "dim", "n_layers", "n_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_side_features < 0:
            raise ValueError(f"SASRecConfig.n_side_features must be >= 0, got {self.n_side_features}")
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
        validate_context_fields(self)


class SASRec(ItemSideFeatures, nn.Module):
    """Causal self-attention over item sequences; see ``SequenceRecommender`` for the API.

    ``item_features`` ``[N + 1, G]`` (multi-hot, row 0 = padding, forced to zero) is required content when
    ``config.n_side_features`` G > 0; passing None then allocates zeros that a checkpoint's
    ``load_state_dict`` fills (the buffer is saved with the model).
    """

    def __init__(self, config: SASRecConfig, *, item_features: Tensor | None = None) -> None:
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
        self._init_context(config)
        # last, as the context modules: the id model draws the same weights with or without side features
        self._init_side_features(config.n_items, config.n_side_features, config.dim, item_features,
                                 init_std=None, owner="SASRecConfig")
        if config.init == "xavier" and self.side_projection is not None:  # a matrix, as the reference code's
            nn.init.xavier_normal_(self.side_projection.weight)

    def _init_context(self, config: SASRecConfig) -> None:
        # only when enabled, and after the id model's init: a default model has exactly the parameters (and
        # init draws) it always had, and a flagged one starts from the same id-model weights
        self.context_embedding, self.attention_bias = context_modules(config)
        if config.init == "xavier":  # as every other matrix of the reference code
            with torch.no_grad():
                for module in (self.context_embedding, self.attention_bias):
                    for param in () if module is None else module.parameters():
                        nn.init.xavier_normal_(param)

    @torch.no_grad()
    def _xavier_init(self) -> None:
        # The reference code xavier-inits every matrix; padding rows stay zero so padding is inert.
        for param in self.parameters():
            if param.dim() >= 2:
                nn.init.xavier_normal_(param)
        self.embedding.item_table.weight[0].zero_()
        self.embedding.position_table.weight[0].zero_()

    def _inputs(self, input_ids: Tensor, context: SequenceContext | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The block inputs: ``mask [B, L]``, embedded tokens ``x [B, L, D]`` and the attention bias
        ``[B or 1, H, L, L]`` (None without relative biases)."""
        context = require_context(self.config, input_ids, context)
        mask = padding_mask(input_ids)  # [B, L]
        extra = None
        if self.context_embedding is not None and context is not None:
            extra = self.context_embedding(mask, context)  # [B, L, D], zero at padding
        # zero at padding: both tables have a zero padding row, and so has the side-feature table
        x = self.embedding(input_ids, extra=extra, items=self.encode_items(input_ids))
        bias = None if self.attention_bias is None else self.attention_bias(mask, context)
        return mask, x, bias

    def forward(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``input_ids [B, L] -> hidden [B, L, D]``; zero at padded positions.

        ``context`` (event times, query times, values ``[B, L]``) is required when ``config.needs_context``
        and ignored otherwise."""
        mask, x, bias = self._inputs(input_ids, context)
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # recompute in backward: less memory
                x = checkpoint(block, x, mask, bias=bias, use_reentrant=False)
            else:
                x = block(x, mask, bias=bias)
        return self.final_norm(x) * mask.unsqueeze(-1).to(x.dtype)

    def grow_items(self, n_items: int) -> None:
        """Extend the item table (and side-feature rows, zero for new items) to ids ``1..n_items`` for items
        first seen online.

        Parameters are replaced, so an optimizer over the old ones must be rebuilt.
        """
        self.embedding.item_table = grow_embedding(self.embedding.item_table, n_items + 1)
        self._grow_side_features(n_items)
        self.n_items = n_items
        self.config = dataclasses.replace(self.config, n_items=n_items)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory: keep only block inputs and recompute activations in backward."""
        self.activation_checkpointing = enabled

    def fsdp_units(self) -> list[nn.Module]:
        """``ShardableModel``: the item table (called by ``encode_items``, at the input and in the loss) and
        each block; positions, norms and context modules stay in the root unit."""
        return [self.embedding.item_table, *self.blocks]

    def encode_users(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, D]``: the hidden state at index -1 (the most recent item, left padding).

        Equal to ``forward(input_ids, context)[:, -1]``, but the final block computes only that position: at
        serving batch sizes this saves about a third of the forward pass."""
        mask, x, bias = self._inputs(input_ids, context)
        for block in self.blocks[:-1]:
            x = block(x, mask, bias=bias)
        x = self.blocks[-1](x, mask, last_only=True, bias=bias)  # [B, 1, D]
        return (self.final_norm(x) * mask[:, -1:].unsqueeze(-1).to(x.dtype))[:, 0]

    def encode_items(self, ids: Tensor) -> Tensor:
        """``[...] -> [..., D]``: rows of the shared input item table (unscaled) plus the mean embedding of
        the item's side features; the input side uses the same representation, scaled by sqrt(D)."""
        return self._add_side_features(self.embedding.item_table(ids), ids)

    def score_all(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, N + 1]`` scores of every item id; column 0 is padding."""
        all_ids = torch.arange(self.n_items + 1, device=input_ids.device)
        return self.similarity.matrix(self.encode_users(input_ids, context), self.encode_items(all_ids))
