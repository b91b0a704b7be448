"""Serving-time scoring of K candidates after one shared history for DeepSeek-V3 (multi-head latent
attention) decoders, written against the model's own modules so LoRA layers, merged weights and any
size of config behave exactly as in the Hugging Face forward.

Why not the generic KV-cache path: it repeats the prefix cache once per row of candidates and DeepSeek's
MLA re-expands those latents into keys and values in every row, and it runs every layer for every
candidate token although only each candidate's LAST token is read. Here:

- the prefix runs once, and its keys and values are expanded once per layer and shared (broadcast, never
  copied) by all candidates;
- the candidate segments run as one flat batch of tokens (no padding through the projections and
  experts); each token attends to the whole prefix and the earlier tokens of its own segment;
- in the last layer only the keys and values of every token are computed: queries, the output
  projection and the MLP / experts run for the K last tokens only, and the prefix stops before it
  (``last_hidden``, for a score read at the last token); ``token_hidden`` runs the last layer for every
  candidate token and the prefix's last token, for a likelihood of the whole segment.

``tests/llm/test_scoring.py`` checks the result against each whole prompt scored alone by the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


def supports(backbone: nn.Module) -> bool:
    """Whether ``backbone`` (a transformers decoder stack, inside peft or not) is a DeepSeek-V3 one this
    module can score: every layer's attention is ``DeepseekV3Attention`` with ``expand_kv``."""
    layers = getattr(backbone, "layers", None)
    if layers is None or not hasattr(backbone, "rotary_emb") or not hasattr(backbone, "norm"):
        return False
    return all(type(layer.self_attn).__name__ == "DeepseekV3Attention" and hasattr(layer.self_attn, "expand_kv")
               for layer in layers)


@dataclass
class _Segments:
    """K candidate segments laid out flat (``N`` real tokens) and in a ``[K, S]`` padded grid."""

    ids: Tensor  # [N] token ids, segment after segment
    positions: Tensor  # [N] prefix length + offset within the segment
    grid_index: Tensor  # [N] where each token sits in the flattened [K * S] grid
    last: Tensor  # [K] flat index of each segment's last token
    lengths: Tensor  # [K]
    width: int  # S, the longest segment

    @classmethod
    def build(cls, segments: Sequence[Sequence[int]], prefix_length: int, device: torch.device) -> _Segments:
        lengths = torch.tensor([len(s) for s in segments], dtype=torch.long)
        if int(lengths.min()) < 1:
            raise ValueError("a candidate segment is empty; every candidate needs at least one token")
        width = int(lengths.max())
        segment = torch.repeat_interleave(torch.arange(len(segments)), lengths)
        starts = torch.cumsum(lengths, 0) - lengths
        offset = torch.arange(int(lengths.sum())) - starts[segment]
        ids = torch.tensor([t for s in segments for t in s], dtype=torch.long)
        return cls(ids.to(device), (prefix_length + offset).to(device), (segment * width + offset).to(device),
                   (starts + lengths - 1).to(device), lengths.to(device), width)


class MLAScorer:
    """Final hidden states at each candidate's last token, for a DeepSeek-V3 ``backbone`` in eval mode."""

    def __init__(self, backbone: nn.Module) -> None:
        if not supports(backbone):
            raise ValueError(f"{type(backbone).__name__} is not a DeepSeek-V3 (MLA) decoder stack")
        self.backbone = backbone
        config = backbone.config
        modeling = sys.modules[type(backbone.layers[0].self_attn).__module__]
        self._rope: Callable[..., tuple[Tensor, Tensor]] = (
            modeling.apply_rotary_pos_emb_interleave if getattr(config, "rope_interleave", False)
            else modeling.apply_rotary_pos_emb)

    @torch.inference_mode()
    def last_hidden(self, prefix: Sequence[int], segments: Sequence[Sequence[int]]) -> Tensor:
        """``[K, D]`` normalised final hidden state at the last token of each of the K ``segments``, each
        read after ``prefix`` (the same values the full model gives for ``prefix + segment`` alone)."""
        return self._run(prefix, segments, every_token=False)[1]

    @torch.inference_mode()
    def token_hidden(self, prefix: Sequence[int], segments: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """``([D], [N, D])``: the normalised final hidden state at the prefix's last token (it predicts every
        segment's first token) and at every token of the segments, laid out segment after segment."""
        prefix_last, tokens = self._run(prefix, segments, every_token=True)
        assert prefix_last is not None
        return prefix_last, tokens

    def _run(self, prefix: Sequence[int], segments: Sequence[Sequence[int]], *,
             every_token: bool) -> tuple[Tensor | None, Tensor]:
        if not prefix:
            raise ValueError("the prefix is empty; the candidates need at least one token of history before them")
        backbone = self.backbone
        embed = backbone.get_input_embeddings()
        device = embed.weight.device
        cand = _Segments.build(segments, len(prefix), device)
        prefix_ids = torch.as_tensor(list(prefix), dtype=torch.long, device=device)
        h_prefix = embed(prefix_ids)[None]  # [1, P, D]
        h_cand = embed(cand.ids)[None]  # [1, N, D]
        rope_prefix = backbone.rotary_emb(h_prefix, torch.arange(len(prefix), device=device)[None])
        rope_cand = backbone.rotary_emb(h_cand, cand.positions[None])
        n_layers = len(backbone.layers)
        for index, layer in enumerate(backbone.layers):
            final = index == n_layers - 1
            attn = layer.self_attn
            x_prefix = layer.input_layernorm(h_prefix)
            k_prefix, v_prefix = self._keys_values(attn, x_prefix, rope_prefix)
            if not final or every_token:  # in the last layer the prefix matters only through its keys/values,
                if final:                 # and its last token when it predicts the segments' first tokens
                    h_prefix, x_prefix = h_prefix[:, -1:], x_prefix[:, -1:]
                    rope_prefix = (rope_prefix[0][:, -1:], rope_prefix[1][:, -1:])
                q_prefix = self._queries(attn, x_prefix, rope_prefix)
                out = nn.functional.scaled_dot_product_attention(q_prefix, k_prefix, v_prefix, is_causal=not final,
                                                                 scale=attn.scaling)
                h_prefix = h_prefix + attn.o_proj(_merge_heads(out))
                h_prefix = h_prefix + layer.mlp(layer.post_attention_layernorm(h_prefix))
            x_cand = layer.input_layernorm(h_cand)
            k_cand, v_cand = self._keys_values(attn, x_cand, rope_cand)
            last_only = final and not every_token  # the last layer: queries at each segment's last token only
            rows = cand.last if last_only else None
            if rows is not None:
                h_cand, x_cand = h_cand[:, rows], x_cand[:, rows]
            q_cand = self._queries(attn, x_cand, _select(rope_cand, rows))
            out = self._attend(q_cand, k_prefix, v_prefix, k_cand, v_cand, cand, attn.scaling, last_only)
            h_cand = h_cand + attn.o_proj(_merge_heads(out))
            h_cand = h_cand + layer.mlp(layer.post_attention_layernorm(h_cand))
        prefix_last = backbone.norm(h_prefix[:, -1])[0] if every_token else None
        return prefix_last, backbone.norm(h_cand)[0]

    def _queries(self, attn: Any, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """``[1, H, T, qk_head_dim]`` rotated queries (the model's q path, LoRA included)."""
        q = attn.q_proj(x) if attn.q_lora_rank is None else attn.q_b_proj(attn.q_a_layernorm(attn.q_a_proj(x)))
        q = q.view(1, x.shape[1], -1, attn.qk_head_dim).transpose(1, 2)
        q_pass, q_rot = torch.split(q, [attn.qk_nope_head_dim, attn.qk_rope_head_dim], dim=-1)
        q_rot = self._rope(q_rot, q_rot, *rope)[0]
        return torch.cat((q_pass, q_rot), dim=-1)

    def _keys_values(self, attn: Any, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``[1, H, T, qk_head_dim]`` keys and ``[1, H, T, v_head_dim]`` values expanded from the latents."""
        latent = attn.kv_a_proj_with_mqa(x)
        kv_nope, k_rot = torch.split(latent, [attn.kv_lora_rank, attn.qk_rope_head_dim], dim=-1)
        kv_nope = attn.kv_a_layernorm(kv_nope).view(1, 1, x.shape[1], attn.kv_lora_rank)
        k_rot = k_rot.view(1, 1, x.shape[1], attn.qk_rope_head_dim)
        k_rot = self._rope(k_rot, k_rot, *rope)[1]
        return attn.expand_kv(kv_nope, k_rot)

    @staticmethod
    def _attend(q: Tensor, k_prefix: Tensor, v_prefix: Tensor, k_cand: Tensor, v_cand: Tensor, cand: _Segments,
                scale: float, last_only: bool) -> Tensor:
        """``[1, H, T, v_head_dim]``: each query over the prefix plus the earlier tokens of its own segment.

        Queries are the N flat tokens, or (``last_only``) the K last tokens. The prefix keys are one shared
        ``[H, P]`` block; a segment's own keys sit in a ``[K, S]`` grid (padding masked out)."""
        heads, n_keys, width = k_cand.shape[1], len(cand.lengths), cand.width
        grid_k = k_cand.new_zeros(heads, n_keys * width, k_cand.shape[-1]).index_copy_(1, cand.grid_index, k_cand[0])
        grid_v = v_cand.new_zeros(heads, n_keys * width, v_cand.shape[-1]).index_copy_(1, cand.grid_index, v_cand[0])
        grid_k, grid_v = grid_k.view(heads, n_keys, width, -1), grid_v.view(heads, n_keys, width, -1)
        if last_only:
            grid_q = q[0].view(heads, n_keys, 1, -1)  # [H, K, 1, d]
            query_offset = (cand.lengths - 1)[:, None]  # [K, 1]
        else:
            grid_q = q.new_zeros(heads, n_keys * width, q.shape[-1]).index_copy_(1, cand.grid_index, q[0])
            grid_q = grid_q.view(heads, n_keys, width, -1)  # [H, K, S, d]
            query_offset = torch.arange(width, device=q.device).expand(n_keys, width)
        scores_prefix = (grid_q.flatten(1, 2) @ k_prefix[0].transpose(1, 2)).view(heads, n_keys, -1, k_prefix.shape[2])
        scores_own = grid_q @ grid_k.transpose(2, 3)  # [H, K, Sq, S]
        visible = torch.arange(width, device=q.device)[None, None, :] <= query_offset[:, :, None]  # [K, Sq, S]
        scores_own = scores_own.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(torch.cat([scores_prefix, scores_own], -1).float() * scale, -1).to(q.dtype)
        n_prefix = k_prefix.shape[2]
        out = (probs[..., :n_prefix].flatten(1, 2) @ v_prefix[0]).view(heads, n_keys, -1, v_prefix.shape[-1])
        out = out + probs[..., n_prefix:] @ grid_v  # [H, K, Sq, dv]
        if last_only:
            return out.view(1, heads, n_keys, -1)
        return out.flatten(1, 2).index_select(1, cand.grid_index)[None]  # back to the N flat tokens


def _select(rope: tuple[Tensor, Tensor], rows: Tensor | None) -> tuple[Tensor, Tensor]:
    return rope if rows is None else (rope[0][:, rows], rope[1][:, rows])


def _merge_heads(out: Tensor) -> Tensor:
    """``[1, H, T, d]`` -> ``[1, T, H * d]``, the o_proj input layout."""
    return out.transpose(1, 2).reshape(1, out.shape[2], -1)
