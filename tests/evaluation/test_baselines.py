import numpy as np
import pytest

from seekrec.data.splits import UserSequences, leave_one_out
from seekrec.evaluation.baselines import EASE, ItemKNN, MostPop
from seekrec.evaluation.ranking import evaluate
from seekrec.evaluation.runner import evaluate_baseline


def _toy_split():
    # items 1-2 and 3-4 always co-occur; item 5 is everyone's. Users 1-20 end with the pair's second
    # item; users 21-40 see the whole pair before their held-out item 5.
    users, items = [], []
    for u in range(1, 41):
        pair = (1, 2) if u % 2 else (3, 4)
        users += [u, u, u]
        items += [5, *pair] if u <= 20 else [*pair, 5]
    seqs = UserSequences.from_interactions(np.array(users), np.array(items), np.arange(len(users)), 40)
    return leave_one_out(seqs)


@pytest.mark.parametrize("model", [ItemKNN(k_neighbors=2), EASE(l2=1.0)])
def test_item_models_learn_co_occurrence(model):
    split = _toy_split()
    result = evaluate(model.fit(split.fit_data("test"), 5), split.test, 5)
    assert result.metrics["hr@10"] == 1.0 and result.ranks.max() == 0


def test_mostpop_counts_distinct_users():
    split = _toy_split()
    pop = MostPop().fit(split.fit_data("test"), 5)
    assert pop.popularity[5].item() == 20  # only users 1-20 keep item 5 in fit data and pop.popularity[0].item() == 0


def test_invalid_hyper_parameters():
    with pytest.raises(ValueError):
        EASE(l2=0)
    with pytest.raises(ValueError):
        ItemKNN(k_neighbors=0)


@pytest.fixture(scope="module")
def ml100k_prepared(ml100k_raw, tmp_path_factory):
    from seekrec.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("ml100k")
    prepare_dataset("ml-100k", ml100k_raw, out)
    return out


@pytest.mark.slow
def test_reference_figures_on_ml100k(ml100k_prepared):
    """The figures the published protocol gives on ml-100k (issue #2), to 3 decimals."""
    pop = evaluate_baseline(ml100k_prepared, "pop")["metrics"]
    assert (round(pop["hr@10"], 3), round(pop["ndcg@10"], 3), round(pop["mrr"], 3)) == (0.086, 0.044, 0.040)
    assert pop["hr@10"] == pytest.approx(0.0859, abs=5e-4) and pop["mrr"] == pytest.approx(0.0402, abs=5e-4)
    ease = evaluate_baseline(ml100k_prepared, "ease")
    assert ease["params"] == {"l2": 100.0}, "validation must choose lambda 100 from the grid"
    assert ease["metrics"]["hr@10"] == pytest.approx(0.1485, abs=5e-4)
    assert ease["metrics"]["ndcg@10"] == pytest.approx(0.0723, abs=5e-4)
    knn = evaluate_baseline(ml100k_prepared, "itemknn", params={"k_neighbors": 100})["metrics"]
    assert pop["ndcg@10"] < knn["ndcg@10"] < ease["metrics"]["ndcg@10"]
