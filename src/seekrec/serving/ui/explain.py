"""Why an item was recommended, where the model can tell: the history items closest to it in the model's
own item-embedding space.

A sequence model scores an item by the dot product of the user's encoded history with the item's embedding;
the history items whose embeddings lie closest to a recommended item's are the ones that pull it up. This is
a reading of the model's geometry, not an attribution through its attention layers, and it exists only for
predictors that expose ``item_embeddings`` (sequence models); pipeline and LLM arms get no reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seekrec.serving.arms import ArmModel


@dataclass(frozen=True)
class Reasons:
    """Per recommended item, the raw id of the history item most similar to it (None: no reason), and the
    history items that weigh most over the whole list, most first."""

    per_item: list[str | None]
    top_history: list[str]


def explain(model: ArmModel, history: Sequence[int], recommended: Sequence[str], top: int = 3) -> Reasons | None:
    """Reasons for ``recommended`` (raw ids) given the user's ``history`` (server item ids, oldest first);
    None when the arm's predictor has no item embeddings or the history holds no item the model knows."""
    embeddings = getattr(model.predictor, "item_embeddings", None)
    if not isinstance(embeddings, torch.Tensor):
        return None
    known = list(dict.fromkeys(model.translate(history)))  # model ids, de-duplicated, oldest first
    if not known or not recommended:
        return None
    catalog = model.predictor.catalog.items
    rec_ids = [catalog.get(raw) for raw in recommended]
    rows = [i for i, m in enumerate(rec_ids) if 0 < m < embeddings.shape[0]]
    with torch.inference_mode():
        hist = torch.nn.functional.normalize(embeddings[known].float(), dim=-1)  # [H, D]
        recs = torch.nn.functional.normalize(embeddings[[rec_ids[i] for i in rows]].float(), dim=-1)  # [R, D]
        similarity = recs @ hist.T  # [R, H]
    raw_history = catalog.decode(known)
    per_item: list[str | None] = [None] * len(recommended)
    for row, best in zip(rows, similarity.argmax(dim=1).tolist()):
        per_item[row] = raw_history[best]
    weight = similarity.clamp(min=0).sum(dim=0)  # [H]: how much each history item pulls the list up
    order = torch.argsort(weight, descending=True)[:top].tolist()
    return Reasons(per_item, [raw_history[i] for i in order if weight[i] > 0])
