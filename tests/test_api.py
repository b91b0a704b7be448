"""``seekrec.api``: a notebook's way to a trained model, checked against the model's own full scoring."""

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

import seekrec.api
from seekrec.cli import main
from seekrec.registry import ModelRegistry
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.run_dir import RunDir


@pytest.fixture(scope="module")
def run(sim_data_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    config = ExperimentConfig.load(None, ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12",
                                          "train.batch_size=32", "train.max_epochs=1", "train.eval_batch_size=64"])
    train_experiment(config, sim_data_dir, out)
    return out


def test_recommend_a_history_is_the_models_own_top_k(run):
    rec = seekrec.api.load(run)
    catalog_items = rec.predictor.catalog.items
    history = catalog_items.decode([3, 7, 1, 12])
    top = rec.recommend(history, k=5)
    spec = RunDir(run).read_model()
    model = RunDir(run).load_best(spec.build()).eval()
    with torch.inference_mode():
        scores = model.score_all(torch.tensor([[0] * 8 + [3, 7, 1, 12]]))[0]  # [N + 1]
    scores = scores.clone()
    scores[[0, 3, 7, 1, 12]] = -torch.inf
    expected = torch.topk(scores, 5)
    assert [item for item, _ in top] == catalog_items.decode(expected.indices.numpy())
    np.testing.assert_allclose([s for _, s in top], expected.values.numpy(), rtol=1e-5)
    assert not set(history) & {item for item, _ in top}
    assert len(rec.recommend(history, k=5, exclude_seen=False)) == 5


def test_a_user_id_reads_the_datasets_history_and_a_registry_gives_the_same(run, sim_data_dir, tmp_path):
    rec = seekrec.api.load(run, data=sim_data_dir)
    user, history = next(iter(rec.histories.items()))
    assert rec.recommend(user, k=4) == rec.recommend(history, k=4)
    registry = tmp_path / "registry"
    ModelRegistry(registry).publish_run(run)
    from_registry = seekrec.api.load(registry, data=sim_data_dir)
    assert from_registry.version == "v000001"
    assert [i for i, _ in from_registry.recommend(user, k=4)] == [i for i, _ in rec.recommend(user, k=4)]
    with pytest.raises(ValueError, match="pass data=PREPARED_DATASET_DIR"):
        seekrec.api.load(run).recommend(user)
    with pytest.raises(KeyError, match="not in the dataset"):
        rec.recommend("no-such-user")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_recommend_all_writes_every_users_top_k(run, sim_data_dir, tmp_path, capsys, suffix):
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", "--model", str(run), "--data", str(sim_data_dir), "--all", "--out", str(out),
                 "--k", "3", "--batch-size", "50"]) == 0
    assert "top 3 of 120 users" in capsys.readouterr().out
    table = pq.read_table(out) if suffix == ".parquet" else pacsv.read_csv(out, pacsv.ReadOptions(),
                                                                           pacsv.ParseOptions(),
                                                                           pacsv.ConvertOptions(
                                                                               column_types={"user_id": "string",
                                                                                             "item_id": "string"}))
    assert table.column_names == ["user_id", "rank", "item_id", "score"] and table.num_rows == 120 * 3
    rows = table.to_pylist()
    rec = seekrec.api.load(run, data=sim_data_dir)
    first = rows[0]["user_id"]
    assert [(r["item_id"], r["rank"]) for r in rows if r["user_id"] == first] == \
        [(item, rank) for rank, (item, _) in enumerate(rec.recommend(first, k=3), 1)]


def test_recommend_mistakes_are_one_line(run, tmp_path, capsys):
    assert main(["recommend", "--model", str(run), "--all", "--out", str(tmp_path / "r.csv")]) == 2
    assert "pass data=PREPARED_DATASET_DIR" in capsys.readouterr().err
    assert main(["recommend", "--model", str(tmp_path / "nope"), "--history", "a"]) == 2
    assert "no such run or registry directory" in capsys.readouterr().err
    assert main(["recommend", "--model", str(run), "--data", "x", "--all", "--out", str(tmp_path / "r.txt")]) == 2
