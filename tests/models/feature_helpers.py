"""Synthetic ``FeatureBatch`` inputs for the feature-based models (two-tower, DIN)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.factory import build_feature_model

N_ITEMS = 40
SEQ_LEN = 8
USER = FeatureSchema(
    categorical=(("gender", 3), ("age", 8), ("liked_genres", 7)),
    dense=("activity", "tenure"),
    sequence_len=SEQ_LEN,
    n_items=N_ITEMS,
)
ITEM = FeatureSchema(
    categorical=(("item_id", N_ITEMS + 1), ("genres", 7), ("decade", 6)),
    dense=("year",),
    text_dim=12,
)
MULTI_VALUED = {"liked_genres": 3, "genres": 3}  # padded width M of the multi-valued columns
FEATURE_MODELS = ("two_tower", "din")
TINY: dict[str, dict[str, Any]] = {
    "two_tower": {"dim": 16, "embed_dim": 8, "hidden_dims": [32], "n_heads": 2, "dropout": 0.0},
    "din": {"embed_dim": 8, "attention_hidden": [16, 8], "hidden_dims": [32, 16], "key_columns": ["genres"]},
}


def make_feature_model(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    catalog = random_catalog(seed=123) if name == "din" else None
    return build_feature_model(name, {**TINY[name], **overrides}, user=USER, item=ITEM, catalog=catalog)


def left_pad(rows: list[list[int]], length: int) -> Tensor:
    """``[B, length]`` long, each row right-aligned (left padding with 0)."""
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, length - len(row):] = torch.tensor(row)
    return out


def random_batch(schema: FeatureSchema, size: int, seed: int, *, min_history: int = 0) -> FeatureBatch:
    """``size`` random rows of ``schema``: multi-valued columns with trailing padding, left-padded
    sequences of random length (at least ``min_history``), recency 0 at padding."""
    g = torch.Generator().manual_seed(seed)
    categorical = {}
    for name, card in schema.categorical:
        width = MULTI_VALUED.get(name, 1)
        ids = torch.randint(1, card, (size, width), generator=g)
        n_real = torch.randint(1, width + 1, (size, 1), generator=g)
        categorical[name] = ids.masked_fill(torch.arange(width)[None] >= n_real, 0)
    dense = torch.randn(size, len(schema.dense), generator=g) if schema.dense else None
    text = torch.randn(size, schema.text_dim, generator=g) if schema.text_dim else None
    sequence = recency = None
    if schema.sequence_len:
        lengths = torch.randint(min_history, schema.sequence_len + 1, (size,), generator=g).tolist()
        rows = [torch.randint(1, schema.n_items + 1, (n,), generator=g).tolist() for n in lengths]
        sequence = left_pad(rows, schema.sequence_len)
        recency = torch.rand(size, schema.sequence_len, generator=g).mul(5).masked_fill(sequence == 0, 0.0)
    return FeatureBatch(categorical, dense, text, sequence, recency)


def random_catalog(seed: int) -> FeatureBatch:
    """Item features of ids ``0..N`` (row i = item i, row 0 all padding)."""
    catalog = random_batch(ITEM, N_ITEMS + 1, seed)
    catalog.categorical["item_id"] = torch.arange(N_ITEMS + 1)[:, None]
    for tensor in (*catalog.categorical.values(), catalog.dense, catalog.text):
        tensor[0] = 0
    return catalog
