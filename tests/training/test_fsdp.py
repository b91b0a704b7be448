"""``train.strategy = "fsdp"``: two gloo processes against one, sharded checkpoints that reshard 2 -> 1 and 1 -> 2,
every model family's FSDP units, the exported single-file weights, and the pieces that need no process group.

Tolerances (fp32): per-step training losses rtol 1e-5 (observed <= 3e-7: only the summation order of the gradient
reduction differs); validation and test ranking metrics abs 1e-6 (no ranking may change); parameters after two
clipped AdamW steps abs 1e-4 (Adam divides by the root of tiny second moments, which amplifies 1e-7 gradient
differences of near-zero elements; observed <= 3e-5). bf16: FSDP computes with bf16-gathered weights where one
process autocasts from fp32 weights, so losses agree to rtol 2e-3 (observed 2.4e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seekrec.data.splits import load_split
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.models.factory import build_model
from seekrec.training.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext
from seekrec.training.parallel import Replicated, Sharded, shard_model
from seekrec.training.run_dir import RunDir
from seekrec.training.sharded_checkpoint import (
    export_checkpoint_weights,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from tests.models import feature_helpers, helpers
from tests.torchrun import assert_same_training, records, run_jobs
from tests.training.fsdp_jobs import CPU, MAX_LEN, MODELS, TRAIN, sequence_run

JOBS = Path(__file__).with_name("fsdp_jobs.py")
CUT = 5  # the interrupted runs stop after global batch 5 (4 batches an epoch: mid-epoch)
FAMILIES = ("sasrec", "deepseek", "two_tower", "din")
EXPERIMENT = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "model.dropout=0.0", "data.max_len=12",
              "train.batch_size=32", "train.max_epochs=1", "train.strategy=fsdp", "train.device=cpu",
              "train.checkpoint_every=2", "loss.name=full_softmax"]


def _files(checkpoint: Path) -> tuple[list[str], int]:
    """The file names of a checkpoint directory and the world size that wrote it."""
    return sorted(p.name for p in checkpoint.iterdir()), json.loads((checkpoint / "state.json").read_text())["world_size"]


@pytest.fixture(scope="module")
def runs(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every training the slow tests compare: runs in this process, one torchrun launch of two gloo ranks for all
    the two-process jobs (starting ranks costs more than the training), then the 2 -> 1 resume here."""
    root, data = tmp_path_factory.mktemp("fsdp"), str(sim_data_dir)
    sequence_run(data, str(root / "one"), CPU)
    sequence_run(data, str(root / "one-then-two"), CPU, stop_after=CUT, resume=True, checkpoint_every=CUT)
    cut_by_one = _files(latest_checkpoint(root / "one-then-two" / "checkpoints"))
    sequence_run(data, str(root / "one-bf16"), CPU, precision="bf16")
    spec = [
        {"kind": "sequence", "data_dir": data, "out": str(root / "two")},
        {"kind": "sequence", "data_dir": data, "out": str(root / "two-then-one"), "stop_after": CUT, "resume": True,
         "checkpoint_every": CUT},
        {"kind": "sequence", "data_dir": data, "out": str(root / "one-then-two"), "resume": True,
         "checkpoint_every": CUT},
        {"kind": "sequence", "data_dir": data, "out": str(root / "two-bf16"), "precision": "bf16"},
        {"kind": "families", "names": list(FAMILIES), "out": str(root / "families.json")},
        {"kind": "experiment", "data": data, "out": str(root / "cli"), "overrides": EXPERIMENT},
    ]
    run_jobs(JOBS, spec, root)
    cut_by_two = _files(latest_checkpoint(root / "two-then-one" / "checkpoints"))
    sequence_run(data, str(root / "two-then-one"), CPU, resume=True, checkpoint_every=CUT)
    return {"root": root, "cut_by_one": cut_by_one, "cut_by_two": cut_by_two}




@pytest.mark.slow
def test_two_processes_match_one_process(runs):
    assert_same_training(runs["root"] / "two", runs["root"] / "one", steps=12)
    grad_norms = [r["grad_norm"] for r in records(runs["root"] / "two", "train")]
    assert max(grad_norms) > TRAIN["clip_norm"], "no step clipped: clipping went untested"


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_on_one(runs):
    names, world = runs["cut_by_two"]
    assert world == 2 and {"__0_0.distcp", "__1_0.distcp", "rank-0.safetensors", "rank-1.safetensors"} <= set(names)
    assert_same_training(runs["root"] / "two-then-one", runs["root"] / "two", steps=12)


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_on_two(runs):
    names, world = runs["cut_by_one"]
    assert world == 1 and "__0_0.distcp" in names and "__1_0.distcp" not in names
    assert_same_training(runs["root"] / "one-then-two", runs["root"] / "one", steps=12)
    assert _files(latest_checkpoint(runs["root"] / "one-then-two" / "checkpoints"))[1] == 2


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_trains_sharded(runs, family):
    """Two steps of 2 accumulated micro-batches per rank, clipped (activation checkpointing on for the sequence
    models), equal one process taking all micro-batches of each global batch."""
    found = json.loads((runs["root"] / "families.json").read_text())[family]
    assert found["loss_rel_diff"] <= 1e-5
    assert found["param_diff"] <= 1e-4


@pytest.mark.slow
def test_bf16_mixed_precision_policy_trains_like_autocast(runs):
    sharded = [r["loss"] for r in records(runs["root"] / "two-bf16", "train")]
    single = [r["loss"] for r in records(runs["root"] / "one-bf16", "train")]
    assert len(sharded) == len(single) == 12 and np.isfinite(sharded).all()
    np.testing.assert_allclose(sharded, single, rtol=2e-3)


@pytest.mark.slow
def test_best_weights_are_gathered_into_one_file_that_scores_as_validated(runs, sim_data_dir):
    """``best/model.safetensors`` of the two-process run holds the whole weights: loaded into a fresh model in
    this process they give the validation metrics logged for them, and the test metrics the run reported."""
    run = RunDir(runs["root"] / "two")
    data, split = load_split(sim_data_dir, "leave_one_out")
    model = run.load_best(build_model("sasrec", MODELS["sasrec"], data.n_items)).eval()
    with torch.inference_mode():
        scored = {which: evaluate(ModelScorer(model, MAX_LEN), split.eval_set(which), data.n_items, batch_size=64,
                                  device=torch.device("cpu")).metrics for which in ("valid", "test")}
    meta, test = run.read_best_meta(), records(run.path, "test")[0]
    for key in ("ndcg@10", "hr@50", "mrr"):
        assert scored["valid"][key] == pytest.approx(meta["valid"][key], abs=1e-6)
        assert scored["test"][key] == pytest.approx(test[key], abs=1e-6)


@pytest.mark.slow
def test_sharded_checkpoints_export_to_one_safetensors_file(runs, sim_data_dir, tmp_path):
    """The last checkpoints of the 1 -> 2 run (written by two ranks) and of the 2 -> 1 run (by one) hold the same
    training: exported in one process, the two files score validation histories alike. (Scores, not every tensor:
    the attention key bias has a zero gradient up to rounding, so AdamW moves it by noise that no score sees.)"""
    data, split = load_split(sim_data_dir, "leave_one_out")
    valid = split.eval_set("valid")
    histories = torch.as_tensor(valid.history.padded(valid.users[:32], MAX_LEN))
    scores = {}
    for name in ("one-then-two", "two-then-one"):
        checkpoint = latest_checkpoint(runs["root"] / name / "checkpoints")
        out = export_checkpoint_weights(checkpoint, build_model("sasrec", MODELS["sasrec"], data.n_items),
                                        tmp_path / f"{name}.safetensors")
        model = build_model("sasrec", MODELS["sasrec"], data.n_items)
        model.load_state_dict(load_file(str(out)))
        with torch.inference_mode():
            scores[name] = model.eval().score_all(histories)
    torch.testing.assert_close(scores["one-then-two"], scores["two-then-one"], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_seekrec_train_runs_fsdp_under_torchrun(runs):
    run = RunDir(runs["root"] / "cli")
    results = run.read_results()
    assert results["world_size"] == 2 and results["strategy"] == "fsdp" and results["metrics"]["ndcg@10"] > 0
    run.load_best(run.read_model().build())  # the gathered weights fit the model the run describes
    checkpoint = latest_checkpoint(run.checkpoints)
    assert _files(checkpoint)[1] == 2 and (checkpoint / ".metadata").is_file()


# -- without a process group ----------------------------------------------------------------------------------


def _model_and_optimizer(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = helpers.make_model("sasrec", seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(helpers.successor_batch(4, helpers.MAX_LEN, seed).input_ids).sum().backward()
    optimizer.step()
    return model, optimizer


def test_sharded_checkpoint_round_trip_in_one_process(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    shadow = {"ema.embedding.item_table.weight": torch.randn(helpers.N_ITEMS + 1, 32)}
    torch.manual_seed(123)
    for step in (1, 2, 3):
        path = save_sharded_checkpoint(tmp_path, step, model, optimizer, {"epoch": 2, "batch": 1}, CPU,
                                       rank_tensors={"task_generator": torch.Generator().manual_seed(9).get_state()},
                                       shared_tensors=shadow)
    assert latest_checkpoint(tmp_path) == path and sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-000000002", "step-000000003"]
    expected_draw = torch.rand(3)
    other, other_optimizer = _model_and_optimizer(1)
    restored = {"ema.embedding.item_table.weight": torch.zeros(helpers.N_ITEMS + 1, 32), "ema.absent": torch.zeros(1)}
    state, extra = load_sharded_checkpoint(path, other, other_optimizer, CPU, shared_tensors=restored)
    assert state["step"] == 3 and state["epoch"] == 2 and state["world_size"] == 1 and state["format"] == "dcp"
    assert torch.equal(torch.rand(3), expected_draw), "the global RNG continues where it was saved"
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert all(torch.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) for i in saved)
    assert torch.equal(restored["ema.embedding.item_table.weight"], shadow["ema.embedding.item_table.weight"])
    assert "ema.absent" not in extra  # left for its owner to name as missing
    assert torch.equal(extra["task_generator"], torch.Generator().manual_seed(9).get_state())


def test_checkpoint_format_must_match_the_strategy(tmp_path):
    model, optimizer = _model_and_optimizer(0)
    config = TrainConfig(strategy="fsdp", device="cpu")
    dcp_dir = save_sharded_checkpoint(tmp_path / "fsdp", 1, model, optimizer, {}, CPU, rank_tensors={},
                                      shared_tensors={})
    with pytest.raises(CheckpointError, match="strategy = 'fsdp'"):
        Replicated(CPU, config).load_checkpoint(dcp_dir, model, optimizer, shared_tensors={})
    safetensors_dir = save_checkpoint(tmp_path / "ddp", 1, model, optimizer, {})
    with pytest.raises(CheckpointError, match="strategy = 'ddp'"):
        Sharded(CPU, config).load_checkpoint(safetensors_dir, model, optimizer, shared_tensors={})
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        Sharded(CPU, config).load_checkpoint(dcp_dir, torch.nn.Linear(4, 3), None, shared_tensors={})


def _family_model(name: str) -> torch.nn.Module:
    if name in helpers.TINY:
        return helpers.make_model(name)
    return feature_helpers.make_feature_model(name)


@pytest.mark.parametrize("family", FAMILIES)
def test_models_name_their_fsdp_units(family):
    model = _family_model(family)
    units = model.fsdp_units()
    submodules = {id(m) for name, m in model.named_modules() if name}
    assert units and all(id(u) in submodules for u in units) and len({id(u) for u in units}) == len(units)
    assert any(isinstance(u, (torch.nn.Embedding, torch.nn.EmbeddingBag)) for u in units), "embedding tables shard"
    assert all(type(u).forward is not torch.nn.Module.forward for u in units), "fully_shard needs a forward"


def test_a_model_without_units_is_refused():
    with pytest.raises(TypeError, match="fsdp_units"):
        shard_model(torch.nn.Linear(4, 3), CPU)


def test_one_process_trains_the_bare_model():
    model = helpers.make_model("sasrec")
    parallel = Sharded(DistContext(0, 1, 0, torch.device("cpu")), TrainConfig(strategy="fsdp", device="cpu"))
    assert parallel.wrap(model) is model and not parallel.sharded
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    with parallel.full_weights(model):
        model.score_all(helpers.successor_batch(2, helpers.MAX_LEN, 0).input_ids)
