"""Generative next-item recommender built from DeepSeek-V3 decoder blocks.

Item (plus optional side-feature) embeddings go through Hugging Face ``transformers``'
``DeepseekV3Model`` via ``inputs_embeds`` (multi-head latent attention with low-rank q / kv,
DeepSeekMoE with shared + top-k routed experts, RMSNorm, rotary positions, SwiGLU), and the final
hidden states are scored against the same item embeddings.

Left padding: positions are ``cumsum(mask) - 1`` clamped at 0 (as HF generation does), so RoPE
sees the same positions whatever the padding. The attention mask is passed as a prepared 4D mask,
which transformers uses as-is: causal + key padding, with each padded query allowed to see itself so
no softmax row is fully masked (NaN-free on every SDPA backend; a NaN at a padded position would
otherwise leak into real ones through 0 * NaN). Routers still see padded tokens (they are
per-token, so that cannot change real outputs) but expert statistics count real tokens only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DeepseekV3Config, DeepseekV3Model
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

from seekrec.models.deepseek_routing import RouterMonitor
from seekrec.models.layers.context import (
    ContextInputs,
    SequenceContext,
    additive_mask,
    context_modules,
    require_context,
    validate_context_fields,
)
from seekrec.models.layers.embeddings import grow_embedding
from seekrec.models.layers.masking import attention_allowed, padding_mask, positions_from_mask
from seekrec.models.layers.side_features import ItemSideFeatures
from seekrec.models.layers.similarity import SIMILARITY_KINDS, Similarity

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
EXPERTS_IMPLEMENTATIONS = (None, "eager", "grouped_mm", "batched_mm")


@dataclass
class DeepSeekRecConfig(ContextInputs):
    """DeepSeekRec hyper-parameters; names map onto ``DeepseekV3Config`` in ``backbone_config``.

    MoE: ``n_routed_experts`` experts in ``n_expert_groups`` groups, each token picks ``top_k``
    experts within its best ``topk_groups`` groups, plus ``n_shared_experts`` always-on experts;
    the first ``n_dense_layers`` layers use a dense SwiGLU FFN of width ``ffn_dim`` instead.
    ``q_lora_rank=None`` uses a full-rank query projection. ``dropout`` applies to the input
    embeddings, ``attention_dropout`` to attention weights and ``hidden_dropout`` to the output of
    every attention and FFN/MoE sublayer before its residual add (where SASRec and GPT-2 drop; the
    DeepSeek-V3 blocks have none of their own). ``n_side_features`` G > 0 adds the mean
    embedding of each item's active side features (a ``[N + 1, G]`` multi-hot buffer).
    ``balance_loss_alpha`` weights the sequence-wise balance loss (DeepSeek-V3: 1e-4; 0 = off);
    ``bias_update_speed`` is gamma of the aux-loss-free bias update (DeepSeek-V3: 1e-3).
    ``experts_implementation=None`` lets transformers pick (grouped_mm when available).

    ``time_features``, ``action_features``, ``relative_position_bias`` and ``relative_time_bias`` (all
    off by default) are the event-time and action inputs of ``models.layers.context``; all but the
    position bias need ``context=`` (``needs_context``).
    """

    n_items: int
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 200
    dropout: float = 0.1
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    q_lora_rank: int | None = 32
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    n_dense_layers: int = 0
    ffn_dim: int = 256
    moe_ffn_dim: int = 64
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    top_k: int = 2
    n_expert_groups: int = 1
    topk_groups: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    similarity: str = "dot"
    temperature: float = 0.05
    n_side_features: int = 0
    balance_loss_alpha: float = 0.0
    bias_update_speed: float = 0.001
    attn_implementation: str = "sdpa"
    experts_implementation: str | None = None

    def __post_init__(self) -> None:
        positive = ("n_items", "dim", "n_layers", "n_heads", "max_len", "kv_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "v_head_dim", "ffn_dim", "moe_ffn_dim", "n_routed_experts", "top_k",
                    "n_expert_groups", "topk_groups")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DeepSeekRecConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_dense_layers", "n_shared_experts", "n_side_features"):
            if getattr(self, name) < 0:
                raise ValueError(f"DeepSeekRecConfig.{name} must be >= 0, got {getattr(self, name)}")
        self._check_moe()
        if self.q_lora_rank is not None and self.q_lora_rank < 1:
            raise ValueError(f"DeepSeekRecConfig.q_lora_rank must be >= 1 or None, got {self.q_lora_rank}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(
                f"DeepSeekRecConfig.qk_rope_head_dim must be even (rotary pairs), got {self.qk_rope_head_dim}"
            )
        for name in ("dropout", "attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"DeepSeekRecConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("routed_scaling_factor", "rope_theta", "rms_norm_eps", "initializer_range", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DeepSeekRecConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("balance_loss_alpha", "bias_update_speed"):
            if getattr(self, name) < 0:
                raise ValueError(f"DeepSeekRecConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.similarity not in SIMILARITY_KINDS:
            raise ValueError(f"DeepSeekRecConfig.similarity must be one of {SIMILARITY_KINDS}, got {self.similarity!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"DeepSeekRecConfig.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                f"got {self.attn_implementation!r}"
            )
        if self.experts_implementation not in EXPERTS_IMPLEMENTATIONS:
            raise ValueError(
                f"DeepSeekRecConfig.experts_implementation must be one of {EXPERTS_IMPLEMENTATIONS}, "
                f"got {self.experts_implementation!r}"
            )
        validate_context_fields(self)

    def _check_moe(self) -> None:
        if self.n_dense_layers > self.n_layers:
            raise ValueError(f"DeepSeekRecConfig.n_dense_layers={self.n_dense_layers} exceeds n_layers={self.n_layers}")
        if self.n_routed_experts % self.n_expert_groups:
            raise ValueError(
                f"DeepSeekRecConfig.n_routed_experts={self.n_routed_experts} must be divisible by "
                f"n_expert_groups={self.n_expert_groups}"
            )
        per_group = self.n_routed_experts // self.n_expert_groups
        if per_group < 2:  # the router scores a group by its top-2 experts
            raise ValueError(f"DeepSeekRecConfig needs >= 2 routed experts per group, got {per_group}")
        if self.topk_groups > self.n_expert_groups:
            raise ValueError(
                f"DeepSeekRecConfig.topk_groups={self.topk_groups} exceeds n_expert_groups={self.n_expert_groups}"
            )
        if self.top_k > self.topk_groups * per_group:
            raise ValueError(
                f"DeepSeekRecConfig.top_k={self.top_k} exceeds the {self.topk_groups * per_group} experts "
                "reachable in topk_groups groups; lower top_k or raise topk_groups"
            )


def backbone_config(config: DeepSeekRecConfig) -> DeepseekV3Config:
    """The ``DeepseekV3Config`` for ``config``; ``vocab_size=1`` as tokens enter via ``inputs_embeds``."""
    # not dataclass fields of DeepseekV3Config: PreTrainedConfig takes them as extra kwargs
    implementations: dict[str, Any] = {
        "attn_implementation": config.attn_implementation,
        "experts_implementation": config.experts_implementation,
    }
    return DeepseekV3Config(
        vocab_size=1,
        hidden_size=config.dim,
        intermediate_size=config.ffn_dim,
        moe_intermediate_size=config.moe_ffn_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_heads,
        n_shared_experts=config.n_shared_experts,
        n_routed_experts=config.n_routed_experts,
        num_experts_per_tok=config.top_k,
        n_group=config.n_expert_groups,
        topk_group=config.topk_groups,
        first_k_dense_replace=config.n_dense_layers,
        routed_scaling_factor=config.routed_scaling_factor,
        norm_topk_prob=config.norm_topk_prob,
        q_lora_rank=config.q_lora_rank,
        kv_lora_rank=config.kv_lora_rank,
        qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim,
        max_position_embeddings=config.max_len,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.initializer_range,
        attention_dropout=config.attention_dropout,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        num_mtp_layers=0,
        **implementations,
    )


class SublayerDropout:
    """Forward hook: dropout on a sublayer's output (the first element when it returns a tuple) in
    training mode. A hook rather than a wrapper module keeps transformers' parameter names, so weights
    and checkpoints are the same with and without it; a plain object so the model still pickles."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not module.training:
            return None
        if isinstance(output, tuple):
            return (F.dropout(output[0], self.p, training=True), *output[1:])
        return F.dropout(output, self.p, training=True)


class DeepSeekRec(ItemSideFeatures, nn.Module):
    """DeepSeek-V3 blocks over item sequences; see ``SequenceRecommender`` for the API.

    ``item_features`` ``[N + 1, G]`` (multi-hot, row 0 = padding, forced to zero) is required
    content when ``config.n_side_features`` G > 0; passing None then allocates zeros that a
    checkpoint's ``load_state_dict`` fills (the buffer is saved with the model).
    """

    def __init__(self, config: DeepSeekRecConfig, *, item_features: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.n_items = config.n_items
        self.item_embedding = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=config.initializer_range)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self._init_side_features(config.n_items, config.n_side_features, config.dim, item_features,
                                 init_std=config.initializer_range, owner="DeepSeekRecConfig")
        self.dropout = nn.Dropout(config.dropout)
        self.backbone = DeepseekV3Model(backbone_config(config))
        # Unused with inputs_embeds; removing it keeps every parameter trained (DDP-friendly).
        self.backbone.register_module("embed_tokens", None)
        if config.hidden_dropout > 0:
            for layer in self.backbone.layers:
                layer.self_attn.register_forward_hook(SublayerDropout(config.hidden_dropout))
                layer.mlp.register_forward_hook(SublayerDropout(config.hidden_dropout))
        self.similarity = Similarity(config.similarity, config.temperature)
        gates = {
            f"layer{i}": layer.mlp.gate
            for i, layer in enumerate(self.backbone.layers)
            if isinstance(layer.mlp, DeepseekV3MoE)
        }
        self._routing = RouterMonitor(gates, config.n_routed_experts, config.top_k)
        self._routing.record_routing = config.balance_loss_alpha > 0
        # created last and only when enabled: a default model draws exactly the parameters it always did
        self.context_embedding, self.attention_bias = context_modules(config, init_std=config.initializer_range)

    def _attention_mask(self, mask: Tensor, dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
        allowed = attention_allowed(mask)  # [B, 1, L, L] bool
        if bias is not None:  # [B, H, L, L] float: the bias where allowed, finfo.min elsewhere (sdpa and eager)
            return additive_mask(allowed, bias, dtype)
        if self.config.attn_implementation == "sdpa":
            return allowed
        # eager attention adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)

    def forward(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``input_ids [B, L] -> hidden [B, L, D]`` after the final RMSNorm; zero at padded positions.

        ``context`` (event times, query times, values ``[B, L]``) is required when ``config.needs_context``
        and ignored otherwise. Relative attention biases go to transformers as the prepared 4D float mask.
        """
        if input_ids.shape[-1] > self.config.max_len:
            raise ValueError(
                f"sequence length {input_ids.shape[-1]} exceeds max_len={self.config.max_len}; "
                "truncate the input or raise max_len in the model config"
            )
        context = require_context(self.config, input_ids, context)
        mask = padding_mask(input_ids)  # [B, L]
        x = self.encode_items(input_ids)  # [B, L, D]
        if self.context_embedding is not None and context is not None:
            x = x + self.context_embedding(mask, context)
        x = self.dropout(x)
        bias = None if self.attention_bias is None else self.attention_bias(mask, context)  # [B or 1, H, L, L]
        self._routing.begin(mask)
        hidden = self.backbone(
            inputs_embeds=x,
            attention_mask=self._attention_mask(mask, x.dtype, bias),
            position_ids=positions_from_mask(mask, start=0),
            use_cache=False,
        ).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def grow_items(self, n_items: int) -> None:
        """Extend the item table (and side-feature rows, zero for new items) to ids ``1..n_items``.

        Parameters are replaced, so an optimizer over the old ones must be rebuilt.
        """
        self.item_embedding = grow_embedding(self.item_embedding, n_items + 1)
        self._grow_side_features(n_items)
        self.n_items = n_items
        self.config = dataclasses.replace(self.config, n_items=n_items)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in backward (transformers' gradient checkpointing).

        Routers then run twice per training step; the routing-bias update still sees the same
        load proportions (every count of a layer doubles), so balancing is unaffected.
        """
        if enabled:
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.backbone.activation_checkpointing_disable()

    def fsdp_units(self) -> list[nn.Module]:
        """``ShardableModel``: the item table and each DeepSeek-V3 decoder layer (attention + MoE); the final
        norm, rotary table, side-feature and context modules stay in the root unit."""
        return [self.item_embedding, *self.backbone.layers]

    def encode_users(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, D]``: the hidden state at index -1 (the most recent item, left padding)."""
        return self.forward(input_ids, context)[:, -1]

    def encode_items(self, ids: Tensor) -> Tensor:
        """``[...] -> [..., D]``: id embedding plus the mean embedding of the item's side features."""
        return self._add_side_features(self.item_embedding(ids), ids)

    def score_all(self, input_ids: Tensor, context: SequenceContext | None = None) -> Tensor:
        """``[B, L] -> [B, N + 1]`` scores of every item id; column 0 is padding."""
        all_ids = torch.arange(self.n_items + 1, device=input_ids.device)
        return self.similarity.matrix(self.encode_users(input_ids, context), self.encode_items(all_ids))

    @property
    def routers(self) -> Mapping[str, nn.Module]:
        """``{"layer{i}": DeepseekV3TopkRouter}`` of every MoE layer (holds ``e_score_correction_bias``)."""
        return self._routing.gates

    def expert_load(self) -> dict[str, list[float]]:
        """``{"layer{i}": [E shares]}`` for every MoE layer: the fraction of real (non-padding)
        tokens' top-k routing slots sent to each routed expert in the last forward (sums to 1)."""
        return self._routing.expert_load()

    def update_routing_bias(self, speed: float | None = None) -> None:
        """Aux-loss-free balancing (DeepSeek-V3): call after each optimizer step.

        ``e_score_correction_bias += speed * sign(mean_load - load)`` per MoE layer, using the expert
        counts of all training forwards since the previous call (``speed`` defaults to
        ``config.bias_update_speed``). The bias only changes which experts are selected.
        """
        self._routing.update_bias(self.config.bias_update_speed if speed is None else speed)

    def auxiliary_loss(self) -> Tensor:
        """``balance_loss_alpha *`` the sequence-wise balance loss of the last forward (0 when off)."""
        if self.config.balance_loss_alpha == 0:
            # not weight.new_zeros: under FSDP the table is a sharded DTensor outside its own forward
            return torch.zeros((), device=self.item_embedding.weight.device)
        return self.config.balance_loss_alpha * self._routing.sequence_balance_loss()

    def auxiliary_stats(self) -> dict[str, Tensor]:
        """``moe_max_load_ratio``: worst expert share over its fair share (1 = balanced)."""
        return {"moe_max_load_ratio": self._routing.max_load_ratio().detach()}
