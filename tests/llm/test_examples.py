import numpy as np
import pytest

from seekrec.data.schema import InteractionData
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.llm.examples import Retriever, UserEvents, eval_requests, load_events, popularity, training_requests
from seekrec.training.experiment import ExperimentConfig, train_experiment

TINY_SASREC = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=64",
               "train.warmup_steps=2", "train.eval_batch_size=64", "train.max_epochs=2", "train.lr=0.01"]


@pytest.fixture(scope="module")
def retriever_run(sim_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sasrec")
    train_experiment(ExperimentConfig.load(None, TINY_SASREC), sim_data_dir, out)
    return out


@pytest.fixture(scope="module")
def loaded(sim_data_dir, retriever_run):
    data, events, split = load_events(sim_data_dir)
    return data, events, split, Retriever.load(retriever_run, data.n_items)


def test_histories_are_prefixes_of_the_rows_with_their_values_and_request_time(loaded):
    _, events, split, _ = loaded
    user = int(split.valid.users[3])
    n = len(split.train.row(user))
    history = events.history(user, n)
    assert np.array_equal(history.items, split.train.row(user))
    assert np.array_equal(history.timestamps, events.seqs.timestamps[events.seqs.offsets[user]:][:n])
    assert history.now == int(events.seqs.timestamps[events.seqs.offsets[user] + n])  # the target's time
    assert len(history.values) == n
    with pytest.raises(ValueError, match="no prefix of length"):
        events.history(user, 10_000)


def test_values_follow_the_time_order_of_the_rows(sim_data_dir, tmp_path):
    data = InteractionData.read(sim_data_dir)
    events_table = data.events
    value = np.arange(events_table.num_rows, dtype=np.float32)  # a distinct value per event, in file order
    data.events = events_table.set_column(4, "value", __import__("pyarrow").array(value))
    events = UserEvents.from_data(data)
    users, items, times = data.interactions()
    for user in (1, 7, 50):
        mine = np.flatnonzero(users == user)
        order = mine[np.lexsort((mine, times[mine]))]
        row = events.history(user, len(order))
        assert np.array_equal(row.items, items[order]) and np.array_equal(row.values, value[order])


def test_training_requests_take_the_last_positions_and_exclude_the_users_items(loaded):
    _, events, split, retriever = loaded
    requests = training_requests(events, split.train, retriever, n_candidates=10, positions_per_user=3)
    lengths = split.train.lengths()
    assert len(requests) == sum(min(3, n - 1) for n in lengths if n >= 2)
    for m in range(0, len(requests), 17):
        user, t = int(requests.users[m]), int(requests.lengths[m])
        row = split.train.row(user)
        assert len(row) - 3 <= t < len(row) and requests.targets[m] == row[t]
        assert not set(requests.candidates[m]) & set(row.tolist())  # neither the positive nor any seen item
        assert np.all(np.diff(requests.logits[m]) <= 0)  # best first
    assert np.all(requests.target_positions == -1)
    again = training_requests(events, split.train, retriever, n_candidates=10, positions_per_user=3)
    assert np.array_equal(again.candidates, requests.candidates)  # deterministic


def test_evaluation_requests_follow_the_full_ranking_protocol(loaded):
    data, events, split, retriever = loaded
    requests = eval_requests(events, split.valid, retriever, n_candidates=10)
    reference = evaluate(ModelScorer(retriever.scorer.model, retriever.max_len), split.valid, data.n_items)
    assert np.array_equal(requests.retriever_ranks, reference.ranks)
    inside = requests.target_positions >= 0
    assert np.array_equal(inside, requests.retriever_ranks < 10)
    rows = np.flatnonzero(inside)
    assert np.array_equal(requests.candidates[rows, requests.target_positions[rows]], requests.targets[rows])
    assert np.array_equal(requests.lengths, split.train.lengths()[split.valid.users])
    for m in range(0, len(requests), 11):  # seen items never come back, the target may
        seen = set(split.train.row(int(requests.users[m])).tolist()) - {int(requests.targets[m])}
        assert not seen & set(requests.candidates[m].tolist())


def test_retriever_errors_name_the_run(loaded, retriever_run, tmp_path):
    data = loaded[0]
    with pytest.raises(FileNotFoundError, match="seekrec train"):
        Retriever.load(tmp_path / "nowhere", data.n_items)
    with pytest.raises(ValueError, match="items but the dataset"):
        Retriever.load(retriever_run, data.n_items + 1)
    with pytest.raises(ValueError, match="not a usable retriever run.*config.json: missing"):
        Retriever.load(tmp_path, data.n_items)
    with pytest.raises(ValueError, match="n_candidates"):
        eval_requests(loaded[1], loaded[2].valid, loaded[3], n_candidates=0)


def test_popularity_counts_training_items(loaded):
    data, _, split, _ = loaded
    counts = popularity(split.train, data.n_items)
    assert counts[0] == 0 and counts.sum() == split.train.n_events
