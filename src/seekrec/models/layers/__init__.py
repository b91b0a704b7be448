"""Blocks shared by the sequence models; each is defined once here and reused."""

from seekrec.models.layers.attention import CausalSelfAttention
from seekrec.models.layers.block import TransformerBlock
from seekrec.models.layers.context import ContextEmbedding, RelativeAttentionBias, SequenceContext
from seekrec.models.layers.embeddings import SequenceEmbedding
from seekrec.models.layers.feedforward import PointwiseFeedForward
from seekrec.models.layers.masking import attention_allowed, padding_mask, positions_from_mask
from seekrec.models.layers.norms import NORM_KINDS, build_norm
from seekrec.models.layers.side_features import ItemSideFeatures
from seekrec.models.layers.similarity import SIMILARITY_KINDS, Similarity

__all__ = [
    "NORM_KINDS",
    "SIMILARITY_KINDS",
    "CausalSelfAttention",
    "ContextEmbedding",
    "ItemSideFeatures",
    "PointwiseFeedForward",
    "RelativeAttentionBias",
    "SequenceContext",
    "SequenceEmbedding",
    "Similarity",
    "TransformerBlock",
    "attention_allowed",
    "build_norm",
    "padding_mask",
    "positions_from_mask",
]
