"""The FAISS index against the plain PyTorch reference: exact equality for the flat index, high
recall for HNSW, cosine handled by normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seekrec.retrieval.exact import exact_topk

pytest.importorskip("faiss")
from seekrec.retrieval.index import IndexConfig, ItemIndex  # noqa: E402


def _data(n: int, b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_flat_index_equals_exact_reference(metric: str) -> None:
    queries, items = _data(n=500, b=32, d=24, seed=0)
    index = ItemIndex(items, metric=metric)
    assert index.kind == "flat"
    scores, ids = index.search(queries, 20)
    ref_scores, ref_rows = exact_topk(queries, items, 20, metric)
    assert torch.equal(ids, ref_rows)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_ids_map_rows_and_k_is_capped() -> None:
    queries, items = _data(n=7, b=3, d=4, seed=1)
    index = ItemIndex(items, ids=np.arange(1, 8))
    scores, ids = index.search(queries, 50)
    _, rows = exact_topk(queries, items, 50)
    assert ids.shape == (3, 7) and torch.equal(ids, rows + 1)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_hnsw_recall_against_exact(metric: str) -> None:
    queries, items = _data(n=4000, b=200, d=32, seed=2)
    index = ItemIndex(items, metric=metric, config=IndexConfig(hnsw_threshold=1000))
    assert index.kind == "hnsw"
    _, ids = index.search(queries, 10)
    _, ref = exact_topk(queries, items, 10, metric)
    hits = sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref.tolist()))
    recall = hits / ref.numel()
    assert recall > 0.95, f"HNSW recall@10 {recall:.3f}"


def test_threshold_picks_kind() -> None:
    _, items = _data(n=100, b=1, d=8, seed=3)
    assert ItemIndex(items, config=IndexConfig(hnsw_threshold=100)).kind == "hnsw"
    assert ItemIndex(items, config=IndexConfig(hnsw_threshold=101)).kind == "flat"


def test_bad_arguments_are_rejected() -> None:
    queries, items = _data(n=10, b=2, d=8, seed=4)
    with pytest.raises(ValueError, match="metric"):
        ItemIndex(items, metric="l2")
    with pytest.raises(ValueError, match="one entry per vector"):
        ItemIndex(items, ids=np.arange(3))
    with pytest.raises(ValueError, match="dimension"):
        ItemIndex(items).search(queries[:, :4], 3)
    with pytest.raises(ValueError, match="k must be"):
        ItemIndex(items).search(queries, 0)
    with pytest.raises(ValueError, match="hnsw_threshold"):
        IndexConfig(hnsw_threshold=-1)
    with pytest.raises(ValueError, match="IndexConfig.codec"):
        IndexConfig(codec="int8")


def _recall(ids: torch.Tensor, ref: torch.Tensor) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(ids.tolist(), ref.tolist())) / ref.numel()


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("threshold", [10**6, 1000], ids=["flat", "hnsw"])
def test_sq8_recall_against_exact(metric: str, threshold: int) -> None:
    """int8 codes rank nearly as the exact scan; 100 sq8 candidates rescored exactly (what serving does)
    hold almost every true top 10."""
    queries, items = _data(n=4000, b=200, d=32, seed=5)
    index = ItemIndex(items, metric=metric, config=IndexConfig(hnsw_threshold=threshold, codec="sq8"))
    assert index.kind == ("flat-sq8" if threshold > 4000 else "hnsw-sq8")
    _, ref = exact_topk(queries, items, 10, metric)
    _, ids = index.search(queries, 10)
    assert _recall(ids, ref) > 0.95, f"sq8 recall@10 {_recall(ids, ref):.3f}"
    _, cand = index.search(queries, 100)
    cand_items = items[cand]  # [B, C, D]
    if metric == "cosine":
        cand_items = torch.nn.functional.normalize(cand_items, dim=-1)
    rescored = cand.gather(1, torch.einsum("bd,bcd->bc", queries, cand_items).topk(10, dim=1).indices)
    assert _recall(rescored, ref) > 0.99, f"sq8 candidates rescored: recall@10 {_recall(rescored, ref):.3f}"


def test_sq8_stores_a_quarter_of_the_bytes() -> None:
    _, items = _data(n=2000, b=1, d=64, seed=6)
    fp32, sq8 = ItemIndex(items), ItemIndex(items, config=IndexConfig(codec="sq8"))
    assert fp32.bytes_per_item() >= 4 * 64
    assert 64 <= sq8.bytes_per_item() < 1.1 * 64  # codes, plus the per-dimension ranges over 2000 items
