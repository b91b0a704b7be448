"""Per-item multi-hot side features (e.g. genres) added to an item-id embedding; shared by the id models.

An item's side embedding is the mean of the embeddings of its active features: the ``[N + 1, G]`` multi-hot
row divided by its count (clamped at 1, so an item without features gets zero) through a bias-free
``Linear(G, D)``. The table is a buffer, so it is saved with the weights and a checkpoint restores it.

``ItemSideFeatures`` is a mixin rather than a submodule: it registers the buffer ``item_features`` and the
module ``side_projection`` on the model itself, so the state-dict keys are ``item_features`` and
``side_projection.weight`` — the keys DeepSeekRec checkpoints have always had.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ItemSideFeatures:
    """Mixin for an ``nn.Module`` item-id model (``class Model(ItemSideFeatures, nn.Module)``); call
    ``_init_side_features`` once in ``__init__``, after ``nn.Module.__init__``.

    With ``width`` G = 0 it registers nothing (``side_projection`` is None), so a model without side
    features has exactly the parameters, buffers and init draws it would have without the mixin.
    """

    item_features: Tensor  # [N + 1, G] buffer, only registered when G > 0
    side_projection: nn.Linear | None

    def _init_side_features(
        self,
        n_items: int,
        width: int,
        dim: int,
        item_features: Tensor | None,
        *,
        init_std: float | None,
        owner: str,
    ) -> None:
        """Register ``item_features [N + 1, G]`` (row 0 forced to zero) and ``side_projection`` G -> D.

        ``item_features=None`` with G > 0 allocates zeros that a checkpoint's ``load_state_dict`` fills.
        ``init_std`` draws the projection from N(0, init_std²); None keeps ``nn.Linear``'s default init.
        ``owner`` names the config class in errors.
        """
        self.side_projection = None
        n_rows = n_items + 1
        if width == 0:
            if item_features is not None:
                raise ValueError(f"item_features given but {owner}.n_side_features is 0; set it to G")
            return
        if item_features is None:
            item_features = torch.zeros(n_rows, width)
        if tuple(item_features.shape) != (n_rows, width):
            raise ValueError(
                f"item_features must have shape [n_items + 1, n_side_features] = [{n_rows}, {width}], "
                f"got {list(item_features.shape)}"
            )
        features = item_features.detach().to(torch.float32).clone()
        features[0] = 0.0  # padding has no features
        self.register_buffer("item_features", features)
        self.side_projection = nn.Linear(width, dim, bias=False)
        if init_std is not None:
            nn.init.normal_(self.side_projection.weight, std=init_std)

    def _add_side_features(self, embedded: Tensor, ids: Tensor) -> Tensor:
        """``embedded [..., D]`` of ``ids [...]`` plus the mean embedding of each item's active side features."""
        if self.side_projection is None:
            return embedded
        features = self.item_features[ids]  # [..., G]
        features = features / features.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return embedded + self.side_projection(features)

    def _grow_side_features(self, n_items: int) -> None:
        """Extend the feature table to ids ``1..n_items``; new items have no features (zero rows)."""
        if self.side_projection is None:
            return
        extra = n_items + 1 - self.item_features.shape[0]
        if extra < 0:
            raise ValueError(f"cannot shrink the item feature table from {self.item_features.shape[0]} to "
                             f"{n_items + 1} rows")
        pad = self.item_features.new_zeros(extra, self.item_features.shape[1])
        self.item_features = torch.cat([self.item_features, pad])
