"""The serving-path scorer against full ranking: with an exact index it ranks every retrieved target as
``ModelScorer`` does, and a target the index does not return ranks past the candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seekrec.data.splits import UserSequences, leave_one_out
from seekrec.evaluation.candidates import CandidateScorer
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.models.factory import build_model
from tests.models.helpers import TINY

pytest.importorskip("faiss")
from seekrec.retrieval.index import IndexConfig, ItemIndex  # noqa: E402

N_ITEMS = 60


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, object]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 20, 40)
    users = np.repeat(np.arange(1, 41), lengths)
    items = rng.integers(1, N_ITEMS + 1, lengths.sum())
    seqs = UserSequences.from_interactions(users, items, np.arange(len(users)), 40)
    torch.manual_seed(0)
    return build_model("sasrec", TINY["sasrec"], N_ITEMS).eval(), leave_one_out(seqs).test


def _index(model: torch.nn.Module, codec: str = "fp32") -> ItemIndex:
    with torch.inference_mode():
        items = model.encode_items(torch.arange(1, N_ITEMS + 1))
    return ItemIndex(items, ids=np.arange(1, N_ITEMS + 1), config=IndexConfig(codec=codec))


@pytest.mark.parametrize("candidates", [N_ITEMS, 5])
def test_exact_index_ranks_retrieved_targets_as_full_ranking(case, candidates: int) -> None:
    model, test = case
    max_len = TINY["sasrec"]["max_len"]
    full = evaluate(ModelScorer(model, max_len), test, N_ITEMS, batch_size=7).ranks
    served = evaluate(CandidateScorer(model, max_len, _index(model), candidates), test, N_ITEMS, batch_size=7).ranks
    top = full < candidates
    assert top.any() and np.array_equal(served[top], full[top])
    assert (served[~top] >= candidates).all()


def test_sq8_index_costs_little(case) -> None:
    model, test = case
    max_len = TINY["sasrec"]["max_len"]
    full = evaluate(ModelScorer(model, max_len), test, N_ITEMS).metrics
    sq8 = evaluate(CandidateScorer(model, max_len, _index(model, "sq8"), 10), test, N_ITEMS).metrics
    assert abs(sq8["ndcg@10"] - full["ndcg@10"]) <= 0.01 and abs(sq8["hr@10"] - full["hr@10"]) <= 0.03


def test_candidates_must_be_positive(case) -> None:
    model, _ = case
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        CandidateScorer(model, 8, _index(model), 0)
