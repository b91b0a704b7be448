"""Input layer of the feature-based models: one ``FeatureBatch`` side -> one flat vector per row.

Categorical columns become mean-pooled embeddings (multi-valued columns such as genres are bags of
ids, 0 = padding, excluded from the mean), dense columns pass through, the text embedding is projected
to the embedding width. The behaviour sequence is left to the model: pooling it is model-specific.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema


def as_feature_schema(value: FeatureSchema | Mapping[str, Any], what: str) -> FeatureSchema:
    """``value`` as a ``FeatureSchema``; a mapping (from a JSON manifest) is converted, lists to tuples."""
    if isinstance(value, FeatureSchema):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a FeatureSchema or a dict of its fields, got {type(value).__name__}")
    fields = dict(value)
    valid = {f.name for f in dataclasses.fields(FeatureSchema)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; valid keys: {sorted(valid)}")
    fields["categorical"] = tuple((str(name), int(card)) for name, card in fields.get("categorical", ()))
    fields["dense"] = tuple(fields.get("dense", ()))
    return FeatureSchema(**fields)


def with_item_id(schema: FeatureSchema, name: str = "item_id") -> FeatureSchema:
    """The item ``schema`` plus a single-valued column ``name`` of cardinality ``n_items + 1``.

    The feature spec leaves the item id to the model; the two-tower and DIN read it as a categorical
    column (cold-start handling, history attention), so the id joins the schema and batches
    (``with_item_ids``) under this name.
    """
    if schema.n_items < 1:
        raise ValueError("the item schema has n_items=0; an item id column needs the item universe's size")
    if name in dict(schema.categorical):
        raise ValueError(f"the item schema already has a column {name!r}")
    return dataclasses.replace(schema, categorical=((name, schema.n_items + 1), *schema.categorical))


def with_item_ids(batch: FeatureBatch, item_ids: Tensor, name: str = "item_id") -> FeatureBatch:
    """``batch`` (B item rows) plus column ``name`` holding ``item_ids [B]`` (0 for an unknown item)."""
    if tuple(item_ids.shape) != (len(batch),):
        raise ValueError(f"item_ids must be [B] = [{len(batch)}], got {list(item_ids.shape)}")
    return dataclasses.replace(batch, categorical={name: item_ids.long()[:, None], **batch.categorical})


class FeatureEmbedding(nn.Module):
    """``FeatureBatch [B] -> [B, out_dim]``: pooled categorical embeddings, dense values, projected text.

    ``zero_init``: columns whose tables start at zero, so an id that never occurs in training
    contributes exactly what a missing id (0) does (the two-tower's cold-start items).
    Output layout: categorical columns in schema order (``dim`` each), then dense, then text (``dim``).
    """

    def __init__(self, schema: FeatureSchema, dim: int, *, zero_init: Iterable[str] = ()) -> None:
        super().__init__()
        zeroed = set(zero_init)
        names = {name for name, _ in schema.categorical}
        if zeroed - names:
            raise ValueError(f"zero_init columns {sorted(zeroed - names)} are not categorical columns of the "
                             f"schema; have {sorted(names)}")
        self.schema = schema
        self.columns = tuple(name for name, _ in schema.categorical)
        self.embeddings = nn.ModuleDict(
            {name: nn.EmbeddingBag(card, dim, mode="mean", padding_idx=0) for name, card in schema.categorical}
        )
        with torch.no_grad():
            for name, table in self.embeddings.items():
                if name in zeroed:
                    table.weight.zero_()
                else:
                    nn.init.normal_(table.weight, std=0.1)
                    table.weight[0].zero_()
        self.text_projection = nn.Linear(schema.text_dim, dim) if schema.text_dim else None
        self.dim = dim
        self.out_dim = dim * len(self.columns) + len(schema.dense) + (dim if schema.text_dim else 0)

    def embed_column(self, name: str, ids: Tensor) -> Tensor:
        """``ids [..., M]`` of column ``name`` -> ``[..., dim]``, the mean over non-padding ids (0 if none)."""
        if name not in self.embeddings:
            raise ValueError(f"no categorical column {name!r}; have {sorted(self.embeddings)}")
        flat = self.embeddings[name](ids.reshape(-1, ids.shape[-1]))  # [prod(...), dim]
        return flat.view(*ids.shape[:-1], self.dim)

    def forward(self, batch: FeatureBatch) -> Tensor:
        dtype = next((p.dtype for p in self.parameters()), torch.float32)
        parts = []
        for name in self.columns:
            if name not in batch.categorical:
                raise ValueError(f"batch lacks categorical column {name!r} that the schema declares")
            parts.append(self.embed_column(name, batch.categorical[name]))  # [B, dim]
        if self.schema.dense:
            if batch.dense is None or batch.dense.shape[-1] != len(self.schema.dense):
                got = None if batch.dense is None else list(batch.dense.shape)
                raise ValueError(f"batch.dense must be [B, {len(self.schema.dense)}] {self.schema.dense}, got {got}")
            parts.append(batch.dense.to(dtype))  # [B, F]
        if self.text_projection is not None:
            if batch.text is None:
                raise ValueError(f"the schema has text_dim={self.schema.text_dim} but batch.text is None")
            parts.append(self.text_projection(batch.text.to(dtype)))  # [B, dim]
        if not parts:  # e.g. a user side described by its behaviour sequence alone
            tensors = (*batch.categorical.values(), batch.dense, batch.text, batch.sequence)
            device = next((t.device for t in tensors if t is not None), torch.device("cpu"))
            return torch.zeros(len(batch), 0, dtype=dtype, device=device)
        return torch.cat(parts, dim=-1)


def cat_feature_batches(batches: Sequence[FeatureBatch]) -> FeatureBatch:
    """Rows of ``batches`` one after another, e.g. positives then sampled negatives for one forward.

    Multi-valued columns are right-padded and sequences left-padded with 0 to the widest batch, so
    batches padded to different widths combine; every batch must carry the same fields.
    """
    if not batches:
        raise ValueError("cat_feature_batches needs at least one batch")
    names = set(batches[0].categorical)
    if any(set(b.categorical) != names for b in batches):
        raise ValueError(f"batches carry different categorical columns: {[sorted(b.categorical) for b in batches]}")

    def cat(tensors: list[Tensor | None], what: str, pad: str | None) -> Tensor | None:
        if all(t is None for t in tensors):
            return None
        present = [t for t in tensors if t is not None]
        if len(present) < len(tensors):
            raise ValueError(f"some batches have {what} and some do not")
        width = max(t.shape[-1] for t in present)
        if pad is None and any(t.shape[-1] != width for t in present):
            raise ValueError(f"batches have {what} of different widths {[t.shape[-1] for t in present]}")
        padded = [F.pad(t, (width - t.shape[-1], 0) if pad == "left" else (0, width - t.shape[-1])) for t in present]
        return torch.cat(padded, dim=0)

    categorical = {name: cat([b.categorical[name] for b in batches], name, "right") for name in batches[0].categorical}
    return FeatureBatch(
        {name: value for name, value in categorical.items() if value is not None},
        dense=cat([b.dense for b in batches], "dense", None),
        text=cat([b.text for b in batches], "text", None),
        sequence=cat([b.sequence for b in batches], "sequence", "left"),
        recency=cat([b.recency for b in batches], "recency", "left"),
    )
