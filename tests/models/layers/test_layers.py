from __future__ import annotations

import pytest
import torch

from seekrec.models.layers.embeddings import SequenceEmbedding
from seekrec.models.layers.norms import build_norm
from seekrec.models.layers.similarity import Similarity


def test_rmsnorm_formula_and_layernorm_kind() -> None:
    x = torch.randn(4, 8)
    rms = build_norm("rmsnorm", 8, 1e-6)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    assert isinstance(build_norm("layernorm", 8, 1e-8), torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="unknown norm"):
        build_norm("batchnorm", 8, 1e-5)


def test_similarity_matrix_matches_pairwise_and_cosine_is_bounded() -> None:
    h, e = torch.randn(5, 8), torch.randn(7, 8)
    for kind in ("dot", "cosine"):
        sim = Similarity(kind, 0.1)
        matrix = sim.matrix(h, e)  # [5, 7]
        pairwise = sim.pairwise(h[:, None, :], e[None, :, :])
        torch.testing.assert_close(matrix, pairwise)
    assert Similarity("cosine", 0.1).matrix(h, e).abs().max() <= 10.0 + 1e-5
    torch.testing.assert_close(Similarity("dot", 0.1).matrix(h, e), h @ e.T)
    with pytest.raises(ValueError, match="similarity"):
        Similarity("l2", 1.0)
    with pytest.raises(ValueError, match="temperature"):
        Similarity("cosine", 0.0)


def test_sequence_embedding_positions_ignore_padding_amount() -> None:
    torch.manual_seed(0)
    emb = SequenceEmbedding(10, 8, max_len=6, dropout=0.0).eval()
    short = emb(torch.tensor([[3, 4]]))
    long = emb(torch.tensor([[0, 0, 0, 0, 3, 4]]))
    torch.testing.assert_close(short[0], long[0, -2:])
    assert (long[0, :4] == 0).all(), "padding has zero item and position rows"
    with pytest.raises(ValueError, match="max_len"):
        emb(torch.ones(1, 7, dtype=torch.long))
