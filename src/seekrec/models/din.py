"""DIN (Zhou et al. 2018, Deep Interest Network): a CTR model whose user-interest vector depends on
the candidate. Each history item gets a weight from an activation unit (an MLP over ``[h, c, h - c,
h * c]`` of the history key h and candidate key c); the interest is the weighted *sum*, not a softmax
average, so the strength of the user's interest survives, as the paper argues. The interest, the
user's and the candidate's features go through an MLP with PReLU to one logit.

History items carry only ids, so their keys are the item-id embedding (shared with the candidate's
id column), plus the embeddings of ``key_columns`` (e.g. genres, as the paper's ``cate_id``), looked
up in an item catalog the model holds as non-persistent buffers (data from the feature spec, not
weights: pass it again when loading).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.layers.features import FeatureEmbedding, as_feature_schema
from seekrec.models.layers.masking import padding_mask
from seekrec.models.layers.mlp import ACTIVATION_KINDS, MLP, build_activation


@dataclass
class DINConfig:
    """DIN hyper-parameters; ``user`` and ``item`` are the feature spec's schemas per side.

    ``embed_dim`` (E): width of each column embedding. ``attention_hidden``: the activation unit's
    hidden widths; ``hidden_dims``: the output MLP's (the paper's 80-40 and 200-80, scaled down).
    ``item_id_column``: the item schema's id column, in the same id space as the user's sequence
    (cardinality ``n_items + 1``). ``key_columns``: further item categorical columns that describe
    history items in attention (needs a catalog). ``use_recency``: feed each event's
    ``log1p(days)`` to the activation unit, so attention can favour recent events.
    """

    user: FeatureSchema
    item: FeatureSchema
    embed_dim: int = 16
    attention_hidden: tuple[int, ...] = (32,)
    hidden_dims: tuple[int, ...] = (64, 32)
    activation: str = "prelu"
    dropout: float = 0.0
    item_id_column: str = "item_id"
    key_columns: tuple[str, ...] = ()
    use_recency: bool = True

    def __post_init__(self) -> None:
        self.user = as_feature_schema(self.user, "DINConfig.user")
        self.item = as_feature_schema(self.item, "DINConfig.item")
        self.attention_hidden = tuple(self.attention_hidden)  # JSON / TOML give lists
        self.hidden_dims = tuple(self.hidden_dims)
        self.key_columns = tuple(self.key_columns)
        if self.embed_dim < 1:
            raise ValueError(f"DINConfig.embed_dim must be >= 1, got {self.embed_dim}")
        if not self.attention_hidden or any(h < 1 for h in (*self.attention_hidden, *self.hidden_dims)):
            raise ValueError("DINConfig.attention_hidden needs at least one width and all widths must be >= 1, got "
                             f"{self.attention_hidden} and hidden_dims={self.hidden_dims}")
        if self.activation not in ACTIVATION_KINDS:
            raise ValueError(f"DINConfig.activation must be one of {ACTIVATION_KINDS}, got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DINConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.user.sequence_len:
            raise ValueError("DIN attends over the behaviour sequence: the user schema needs sequence_len >= 1")
        cardinality = dict(self.item.categorical)
        if cardinality.get(self.item_id_column) != self.user.n_items + 1:
            raise ValueError(
                f"DINConfig.item_id_column={self.item_id_column!r} must be an item categorical column with "
                f"cardinality n_items + 1 = {self.user.n_items + 1} (the sequence's id space); item columns: "
                f"{self.item.categorical}")
        bad = [c for c in self.key_columns if c not in cardinality or c == self.item_id_column]
        if bad or len(set(self.key_columns)) != len(self.key_columns):
            raise ValueError(f"DINConfig.key_columns {self.key_columns} must be distinct item categorical columns "
                             f"other than the id column; bad: {bad}")


class ActivationUnit(nn.Module):
    """``hist [B, L, K], cand [B, C, K], recency [B, L] -> weights [B, C, L]`` (no softmax).

    ``forward`` splits the first layer's weight by input block, ``W [h, c, h - c, h * c, r] =
    (W_h + W_d) h + (W_c - W_d) c + W_p (h * c) + w_r r``, so the ``[B, C, L, 4K]`` concatenation of
    ``reference`` is never built; the two are equal (tested).
    """

    def __init__(self, key_dim: int, hidden_dims: tuple[int, ...], activation: str, use_recency: bool) -> None:
        super().__init__()
        self.key_dim = key_dim
        self.use_recency = use_recency
        self.first = nn.Linear(4 * key_dim + int(use_recency), hidden_dims[0])
        self.activation = build_activation(activation, hidden_dims[0])
        self.rest = MLP(hidden_dims[0], hidden_dims[1:], 1, activation=activation)

    def forward(self, hist: Tensor, cand: Tensor, recency: Tensor) -> Tensor:
        k = self.key_dim
        w_h, w_c, w_d, w_p = self.first.weight[:, :k], self.first.weight[:, k:2 * k], \
            self.first.weight[:, 2 * k:3 * k], self.first.weight[:, 3 * k:4 * k]  # each [H, K]
        per_hist = hist @ (w_h + w_d).T  # [B, L, H]
        if self.use_recency:
            per_hist = per_hist + recency[..., None] * self.first.weight[:, 4 * k]
        per_cand = cand @ (w_c - w_d).T + self.first.bias  # [B, C, H]
        # W_p (h * c) for every (c, l): hist [B, L, K] against cand-scaled weights [B, C, K, H]
        product = torch.einsum("blk,bckh->bclh", hist, cand[..., None] * w_p.T)  # [B, C, L, H]
        hidden = product + per_hist[:, None] + per_cand[:, :, None]  # [B, C, L, H]
        return self.rest(self.activation(hidden)).squeeze(-1)

    def reference(self, hist: Tensor, cand: Tensor, recency: Tensor) -> Tensor:
        """The plain concatenation the paper describes; what ``forward`` must equal."""
        shape = (hist.shape[0], cand.shape[1], hist.shape[1], self.key_dim)  # [B, C, L, K]
        h, c = hist[:, None].expand(shape), cand[:, :, None].expand(shape)
        parts = [h, c, h - c, h * c]
        if self.use_recency:
            parts.append(recency[:, None, :, None].expand(*shape[:3], 1))
        return self.rest(self.activation(self.first(torch.cat(parts, dim=-1)))).squeeze(-1)


class DIN(nn.Module):
    """Target attention over the behaviour sequence plus user and item features -> one CTR logit."""

    fsdp_forward_methods = ("score_candidates",)  # what ClickGroupTask calls in training

    def __init__(self, config: DINConfig, *, catalog: FeatureBatch | None = None) -> None:
        super().__init__()
        self.config = config
        width = config.embed_dim
        self.user_features = FeatureEmbedding(config.user, width)
        self.item_features = FeatureEmbedding(config.item, width)
        key_dim = width * (1 + len(config.key_columns))
        self.attention = ActivationUnit(key_dim, config.attention_hidden, config.activation, config.use_recency)
        in_dim = self.user_features.out_dim + self.item_features.out_dim + key_dim
        self.mlp = MLP(in_dim, config.hidden_dims, 1, activation=config.activation, dropout=config.dropout)
        self.set_catalog(catalog)

    def set_catalog(self, catalog: FeatureBatch | None) -> None:
        """Hold the ``key_columns`` of ``catalog`` (row i = item id i, ``n_items + 1`` rows) as
        buffers, to describe history items; needed when ``key_columns`` is not empty."""
        if not self.config.key_columns:
            return
        rows = self.config.user.n_items + 1
        if catalog is None or len(catalog) != rows:
            got = None if catalog is None else len(catalog)
            raise ValueError(f"DIN with key_columns={self.config.key_columns} needs the item catalog: a "
                             f"FeatureBatch of n_items + 1 = {rows} rows indexed by item id; got {got}")
        device = self.mlp.layers[0].weight.device
        for name in self.config.key_columns:
            if name not in catalog.categorical:
                raise ValueError(f"the catalog lacks key column {name!r}")
            self.register_buffer(f"catalog_{name}", catalog.categorical[name].to(device), persistent=False)

    def fsdp_units(self) -> list[nn.Module]:
        """``ShardableModel``: every embedding table of both feature sides (the item-id table is the large
        one); the activation unit and the output MLP stay in the root unit."""
        return [*self.user_features.embeddings.values(), *self.item_features.embeddings.values()]

    def forward(self, user: FeatureBatch, item: FeatureBatch) -> Tensor:
        """``user`` and ``item`` with B rows each (pair b = user b, item b) -> logits ``[B]``."""
        return self.score_candidates(user, item).squeeze(1)

    def score_candidates(self, user: FeatureBatch, items: FeatureBatch, *, shared: bool = False) -> Tensor:
        """Logits ``[B, C]`` of C candidates per user, the user side computed once per user.

        ``items``: ``B * C`` rows, user b's candidates at rows ``b * C .. b * C + C - 1``; or with
        ``shared=True``, C rows scored for every user.
        """
        n_users, n_rows = len(user), len(items)
        if not shared and n_rows % max(n_users, 1):
            raise ValueError(f"items has {n_rows} rows, not a multiple of the {n_users} users; pass B * C rows "
                             "or shared=True for one candidate list")
        if user.sequence is None:
            raise ValueError("DIN needs the user's behaviour sequence; the batch's sequence is None")
        sequence = user.sequence  # [B, L]
        mask = padding_mask(sequence)  # [B, L]
        hist = self._keys(sequence) * mask[..., None].to(self._dtype())  # [B, L, K]
        recency = torch.zeros_like(hist[..., 0]) if user.recency is None else user.recency.to(hist.dtype)
        recency = recency * mask  # padding never matters, whatever the feature side leaves there
        cand = self._candidate_keys(items)  # [n_rows, K]
        item_x = self.item_features(items)  # [n_rows, I]
        if shared:
            cand = cand[None].expand(n_users, -1, -1)  # [B, C, K]
            item_x = item_x[None].expand(n_users, -1, -1)  # [B, C, I]
        else:
            cand = cand.view(n_users, -1, cand.shape[-1])
            item_x = item_x.view(n_users, -1, item_x.shape[-1])
        weights = self.attention(hist, cand, recency) * mask[:, None].to(hist.dtype)  # [B, C, L]
        interest = torch.einsum("bcl,blk->bck", weights, hist)  # [B, C, K], weighted sum, no softmax
        user_x = self.user_features(user)[:, None].expand(-1, cand.shape[1], -1)  # [B, C, U]
        return self.mlp(torch.cat([user_x, item_x, interest], dim=-1)).squeeze(-1)

    def _keys(self, ids: Tensor) -> Tensor:
        """History item ids ``[B, L]`` -> keys ``[B, L, K]``: id embedding then each key column's."""
        parts = [self.item_features.embed_column(self.config.item_id_column, ids[..., None])]
        for name in self.config.key_columns:
            values = getattr(self, f"catalog_{name}")[ids]  # [B, L, M]
            parts.append(self.item_features.embed_column(name, values))
        return torch.cat(parts, dim=-1)

    def _candidate_keys(self, items: FeatureBatch) -> Tensor:
        """Candidate rows -> keys ``[N, K]`` from the batch's own columns, laid out as ``_keys``."""
        names = (self.config.item_id_column, *self.config.key_columns)
        missing = [n for n in names if n not in items.categorical]
        if missing:
            raise ValueError(f"the item batch lacks categorical columns {missing}")
        return torch.cat([self.item_features.embed_column(n, items.categorical[n]) for n in names], dim=-1)

    def _dtype(self) -> torch.dtype:
        return self.mlp.layers[0].weight.dtype
