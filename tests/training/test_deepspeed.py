"""``train.strategy = "deepspeed"``: the ds_config.json <-> ``TrainConfig`` translation and the checks of
``seekrec train --deepspeed`` (no DeepSpeed needed), and, where DeepSpeed is installed, ZeRO-2 on two gloo
processes against DDP.

Tolerances (two CPU processes, gloo): fp32 ZeRO-2 against DDP, per-step losses rtol 1e-5 (observed 1.3e-7: only the
summation order of the gradient reduction differs) and ranking metrics abs 1e-6 (equal); a DeepSpeed checkpoint
resumed mid-epoch, the same. bf16: DeepSpeed keeps the module in bf16 (fp32 master weights in the optimiser) where
DDP autocasts from fp32 weights, so losses agree to rtol 2e-3 (observed 3.5e-4).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seekrec.cli import build_parser, main
from seekrec.training.checkpoint import CheckpointError, latest_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.deepspeed_config import (
    ds_config_from_train,
    engine_config,
    read_ds_config,
    train_from_ds_config,
)
from seekrec.training.experiment import ExperimentConfig
from seekrec.training.parallel import Replicated, Sharded
from seekrec.training.run_dir import RunDir
from tests.torchrun import assert_same_training, records, run_jobs
from tests.training.fsdp_jobs import CPU, TRAIN

JOBS = Path(__file__).with_name("fsdp_jobs.py")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="DeepSpeed is not installed: pip install "
                                     "'seekrec[deepspeed]' (CI's .[dev] includes it)")
# A seed-style config: ZeRO-2, mixed precision, AdamW, WarmupLR, the batch sizes left to seekrec.
SEED = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": 1.0,
    "fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 5e7},
    "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": "auto", "warmup_num_steps": 500}},
    "steps_per_print": 100,
}


def _write(path: Path, config: Any) -> Path:
    path.write_text(json.dumps(config))
    return path


# -- ds_config.json -> TrainConfig ------------------------------------------------------------------------------


def test_a_seed_config_sets_the_train_fields_it_names():
    train = train_from_ds_config(TrainConfig(), SEED)
    assert (train.lr, train.betas, train.weight_decay) == (3e-4, (0.9, 0.95), 0.01)
    assert (train.clip_norm, train.precision, train.warmup_steps, train.min_lr_ratio) == (1.0, "fp16", 500, 1.0)
    assert (train.batch_size, train.grad_accum) == (128, 1)  # "auto": seekrec's


def test_the_batch_comes_from_the_json_or_from_its_micro_batch_and_the_world_size():
    train = train_from_ds_config(TrainConfig(), {"train_batch_size": 256, "gradient_accumulation_steps": 4})
    assert (train.batch_size, train.grad_accum) == (256, 4)
    micro = train_from_ds_config(TrainConfig(grad_accum=2), {"train_micro_batch_size_per_gpu": 16}, world_size=8)
    assert micro.batch_size == 16 * 2 * 8


def test_precision_and_clipping_off_in_the_json_turn_them_off():
    train = train_from_ds_config(TrainConfig(precision="bf16"), {"fp16": {"enabled": False},
                                                                 "gradient_clipping": 0.0})
    assert train.precision == "fp32" and train.clip_norm is None
    cosine = train_from_ds_config(TrainConfig(), {"scheduler": {"type": "WarmupCosineLR", "params": {
        "warmup_num_steps": 50, "cos_min_ratio": 0.1, "total_num_steps": "auto"}}})
    assert (cosine.warmup_steps, cosine.min_lr_ratio) == (50, 0.1)


@pytest.mark.parametrize(("field", "value", "json_key"), [
    ("lr", 1e-3, "optimizer.params.lr = 0.0003"),
    ("precision", "bf16", "fp16.enabled = True"),
    ("clip_norm", 0.5, "gradient_clipping = 1.0"),
    ("warmup_steps", 10, "scheduler.params.warmup_num_steps = 500"),
    ("weight_decay", 0.1, "optimizer.params.weight_decay = 0.01"),
])
def test_a_train_value_the_user_set_that_disagrees_is_named_with_the_json_key(field, value, json_key):
    with pytest.raises(ValueError, match=rf"train\.{field} = .* \(command line\) conflicts with ds\.json "
                                         rf"{json_key.replace('.', '[.]')}"):
        train_from_ds_config(TrainConfig(**{field: value}), SEED, explicit={field: "command line"}, source="ds.json")
    # the same value, set by the user, agrees; at its default, the JSON's value wins silently
    train_from_ds_config(TrainConfig(**{field: getattr(train_from_ds_config(TrainConfig(), SEED), field)}), SEED,
                         explicit={field: "command line"})


@pytest.mark.parametrize(("change", "message"), [
    ({"zero_optimization": {"stage": 3}}, "stage 3 is not supported"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer is not supported"),
    ({"optimizer": {"type": "Lamb", "params": {"lr": 1e-3}}}, "optimizer.type 'Lamb'"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "amsgrad": True}}}, "optimizer.params.amsgrad"),
    ({"optimizer": {"type": "Adam", "params": {"adam_w_mode": False}}}, "adam_w_mode false"),
    ({"optimizer": {"type": "AdamW", "params": {"eps": 1e-6}}}, "eps 1e-06"),
    ({"optimizer": {"type": "AdamW", "params": {"betas": 0.9}}}, "betas must be"),
    ({"scheduler": {"type": "OneCycle", "params": {}}}, "scheduler.type 'OneCycle'"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
      "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": 3e-4}}}, "lr 0.001 and .*warmup_max_lr 0.0003"),
    ({"bf16": {"enabled": True}}, "both true"),
    ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 16, "gradient_accumulation_steps": 1},
     r"train_batch_size 64 != train_micro_batch_size_per_gpu 16 x gradient_accumulation_steps 1 x world size 2"),
    ({"train_batch_size": 0}, "train_batch_size must be an integer >= 1"),
    ({"gradient_clipping": "high"}, "gradient_clipping must be a number"),
    ({"amp": {"enabled": True}}, "apex"),
])
def test_what_seekrec_cannot_honour_is_refused_naming_the_key(change, message):
    with pytest.raises(ValueError, match=message):
        train_from_ds_config(TrainConfig(), {**SEED, **change}, world_size=2)


# -- TrainConfig -> the engine's config ---------------------------------------------------------------------------


def test_the_engine_config_fills_auto_from_seekrec_and_drops_the_optimizer():
    ds = SEED | {"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "weight_decay": 0.01}}}
    train = train_from_ds_config(TrainConfig(batch_size=64, grad_accum=2, lr=1e-3), ds, world_size=4)
    config = engine_config(train, ds, world_size=4, total_steps=1000)
    assert (config["train_batch_size"], config["gradient_accumulation_steps"]) == (64, 2)
    assert config["train_micro_batch_size_per_gpu"] == 8 and config["gradient_clipping"] == 1.0
    assert "optimizer" not in config  # seekrec's AdamW is passed to deepspeed.initialize
    assert config["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 1e-3, "warmup_num_steps": 500}
    assert config["fp16"] == {**SEED["fp16"], "enabled": True} and config["bf16"] == {"enabled": False}
    assert config["zero_optimization"] == SEED["zero_optimization"]
    cosine = {"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_type": "linear"}}}
    filled = engine_config(TrainConfig(warmup_steps=5, min_lr_ratio=0.1), cosine, world_size=1, total_steps=300)
    assert filled["scheduler"]["params"] == {"warmup_type": "linear", "warmup_num_steps": 5, "total_num_steps": 300,
                                             "cos_min_ratio": 0.1}
    assert "scheduler" not in engine_config(TrainConfig(), {}, world_size=1, total_steps=10)  # seekrec's schedule


@pytest.mark.parametrize(("train", "ds", "world_size", "message"), [
    (TrainConfig(batch_size=100), {}, 3, "train.batch_size 100 is not a multiple of train.grad_accum 1 x 3 ranks"),
    (TrainConfig(lr=1e-3), {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}}, 1, "load the config with"),
    (TrainConfig(), {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, 1,
     "zero_optimization.reduce_bucket_size is \"auto\" but seekrec has no value"),
    (TrainConfig(warmup_steps=0, min_lr_ratio=1.0), {"scheduler": {"type": "WarmupLR"}}, 1, "warmup_num_steps >= 1"),
])
def test_the_engine_config_is_refused_when_deepspeed_could_not_run_it(train, ds, world_size, message):
    with pytest.raises(ValueError, match=message):
        engine_config(train, ds, world_size=world_size, total_steps=100)


@pytest.mark.parametrize("train", [
    TrainConfig(),
    TrainConfig(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, warmup_steps=20, min_lr_ratio=0.1, batch_size=96,
                grad_accum=3, clip_norm=None, precision="bf16"),
    TrainConfig(precision="fp16", clip_norm=0.5, batch_size=64, min_lr_ratio=1.0),
])
def test_seekrec_to_ds_config_and_back_keeps_every_mapped_field(train):
    ds = ds_config_from_train(train, world_size=2)
    back = train_from_ds_config(TrainConfig(lr=0.5, weight_decay=0.3, precision="fp32", batch_size=8), ds,
                                world_size=2)
    for field in ("lr", "betas", "weight_decay", "warmup_steps", "min_lr_ratio", "batch_size", "grad_accum",
                  "clip_norm", "precision"):
        assert getattr(back, field) == getattr(train, field), field
    assert engine_config(back, ds, world_size=2, total_steps=50)["scheduler"]["params"]["total_num_steps"] == 50


def test_a_run_checkpointed_by_one_strategy_is_refused_by_another(tmp_path):
    (tmp_path / "deepspeed").mkdir()  # the layout of a checkpoint written under strategy "deepspeed"
    model = torch.nn.Linear(2, 2)
    for strategy in (Replicated, Sharded):
        with pytest.raises(CheckpointError, match="written with train.strategy = 'deepspeed'"):
            strategy(CPU, TrainConfig(device="cpu")).load_checkpoint(tmp_path, model, None, shared_tensors={})


def test_without_deepspeed_the_strategy_says_how_to_install_it(monkeypatch, tmp_path):
    from seekrec.training.parallel import build_parallel

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # as if not installed
    config = TrainConfig(strategy="deepspeed", deepspeed_config=str(_write(tmp_path / "ds.json", {})), device="cpu")
    strategy = build_parallel(config, CPU)
    with pytest.raises(ImportError, match=r"pip install 'seekrec\[deepspeed\]'"):
        strategy.attach(torch.nn.Linear(2, 2), torch.optim.AdamW(torch.nn.Linear(2, 2).parameters()), None,
                        total_steps=1)


# -- seekrec train --deepspeed -------------------------------------------------------------------------------------


def test_seekrec_train_deepspeed_reads_the_json_into_the_config(tmp_path, monkeypatch):
    ds = _write(tmp_path / "ds.json", SEED)
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nbatch_size = 64\nlr = 0.0003\n")  # agrees with the JSON's lr
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = ExperimentConfig.load(toml, ["train.strategy=deepspeed", f"train.deepspeed_config={json.dumps(str(ds))}"])
    assert config.train.strategy == "deepspeed" and config.train.deepspeed_config == str(ds)
    assert (config.train.lr, config.train.precision, config.train.batch_size) == (3e-4, "fp16", 64)
    assert ExperimentConfig.from_dict(config.to_dict()) == config  # config.json holds the merged values
    toml.write_text("[train]\nlr = 0.001\n")
    with pytest.raises(ValueError, match=rf"train.lr = 0.001 \({toml}\) conflicts with {ds} optimizer.params.lr"):
        ExperimentConfig.load(toml, ["train.strategy=deepspeed", f"train.deepspeed_config={json.dumps(str(ds))}"])


@pytest.mark.parametrize(("json_text", "extra", "message"), [
    (None, [], "missing.json: no such DeepSpeed config file; check the --deepspeed path"),
    ('{"train_batch_size": 64,\n "fp16": {enabled: true}}', [],
     "invalid JSON at line 2 column 11: Expecting property name"),
    ("[1, 2]", [], "a DeepSpeed config is a JSON object"),
    (json.dumps(SEED), ["train.lr=0.01"], "train.lr = 0.01 (command line) conflicts with"),
    (json.dumps(SEED), ["train.precision=bf16"], "train.precision = 'bf16' (command line) conflicts with"),
    (json.dumps(SEED | {"zero_optimization": {"stage": 3}}), [], "stage 3 is not supported"),
    (json.dumps(SEED), ["train.strategy=fsdp"], "train.strategy = 'deepspeed' goes with train.deepspeed_config"),
])
def test_seekrec_train_deepspeed_mistakes_are_one_line(json_text, extra, message, tmp_path, capsys):
    path = tmp_path / "missing.json"
    if json_text is not None:
        path = tmp_path / "ds.json"
        path.write_text(json_text)
    code = main(["train", "--deepspeed", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "run"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("seekrec: error: "), err
    assert message in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_seekrec_takes_the_deepspeed_launchers_local_rank():
    """``deepspeed --module seekrec.cli train ...`` runs ``python -m seekrec.cli --local_rank=N train ...``."""
    args = build_parser().parse_args(["--local_rank=3", "train", "--deepspeed", "ds.json"])
    assert args.command == "train" and args.deepspeed == Path("ds.json")


def test_read_ds_config_returns_the_object(tmp_path):
    assert read_ds_config(_write(tmp_path / "ds.json", SEED)) == SEED


# -- ZeRO-2 on two gloo processes --------------------------------------------------------------------------------

CUT = 5  # the interrupted run stops after global batch 5 of 9 (3 epochs of 3 steps, the last of 1 micro-batch)
ACCUM = {"batch_size": 48, "grad_accum": 2}  # 120 sequences: micro-batches of 24, steps of 2, 2 and 1
ZERO2 = {"train_batch_size": 48, "gradient_accumulation_steps": 2, "gradient_clipping": TRAIN["clip_norm"],
         "optimizer": {"type": "AdamW", "params": {"lr": TRAIN["lr"], "betas": [0.9, 0.98], "eps": 1e-8,
                                                   "weight_decay": 0.0}},
         "zero_optimization": {"stage": 2}, "fp16": {"enabled": False}, "bf16": {"enabled": False},
         "steps_per_print": 100000}
ZERO2_BF16 = {"train_batch_size": "auto", "bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
              "steps_per_print": 100000}
CLI_SEED = SEED | {"fp16": {"enabled": False}, "bf16": {"enabled": True},  # fp16 needs a GPU
                   "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                                             "weight_decay": 0.01}},
                   "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": "auto",
                                                                "warmup_num_steps": 3}}}
EXPERIMENT = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "model.dropout=0.0", "data.max_len=12",
              "train.batch_size=32", "train.max_epochs=2", "train.device=cpu", "train.checkpoint_every=2",
              "loss.name=full_softmax"]


@pytest.fixture(scope="module")
def ds_runs(sim_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch of two gloo ranks for every DeepSpeed and DDP training the slow tests compare."""
    root, data = tmp_path_factory.mktemp("deepspeed"), str(sim_data_dir)
    zero2, bf16 = str(_write(root / "zero2.json", ZERO2)), str(_write(root / "zero2-bf16.json", ZERO2_BF16))
    seed = str(_write(root / "seed.json", CLI_SEED))
    deepspeed = {"strategy": "deepspeed", "deepspeed_config": zero2, **ACCUM}
    spec = [
        {"kind": "sequence", "data_dir": data, "out": str(root / "ddp"), "strategy": "ddp", **ACCUM},
        {"kind": "sequence", "data_dir": data, "out": str(root / "zero2"), **deepspeed},
        {"kind": "sequence", "data_dir": data, "out": str(root / "zero2-cut"), "stop_after": CUT, "resume": True,
         "checkpoint_every": CUT, **deepspeed},
        {"kind": "sequence", "data_dir": data, "out": str(root / "zero2-cut"), "resume": True, "checkpoint_every": CUT,
         **deepspeed},
        {"kind": "sequence", "data_dir": data, "out": str(root / "ddp-bf16"), "strategy": "ddp", "precision": "bf16"},
        {"kind": "sequence", "data_dir": data, "out": str(root / "zero2-bf16"), "strategy": "deepspeed",
         "deepspeed_config": bf16, "precision": "bf16"},
        {"kind": "experiment", "data": data, "out": str(root / "cli"),
         "overrides": [*EXPERIMENT, "train.strategy=deepspeed", f"train.deepspeed_config={json.dumps(seed)}"]},
    ]
    run_jobs(JOBS, spec, root)
    return root




@pytest.mark.slow
@needs_deepspeed
def test_zero2_on_two_processes_matches_ddp(ds_runs):
    """ZeRO-2 with 2 accumulated micro-batches (the last step of each epoch has 1), clipping and a weight average."""
    assert_same_training(ds_runs / "zero2", ds_runs / "ddp", steps=9)
    norms = [(a["grad_norm"], b["grad_norm"]) for a, b in zip(records(ds_runs / "zero2", "train"),
                                                              records(ds_runs / "ddp", "train"))]
    assert all(a == pytest.approx(b, rel=1e-4) for a, b in norms) and max(b for _, b in norms) > TRAIN["clip_norm"]
    assert RunDir(ds_runs / "zero2").read_best_meta()["epoch"] >= 1


@pytest.mark.slow
@needs_deepspeed
def test_a_deepspeed_checkpoint_resumes_mid_epoch_exactly(ds_runs):
    run = ds_runs / "zero2-cut"
    assert_same_training(run, ds_runs / "zero2", steps=9)
    checkpoint = latest_checkpoint(run / "checkpoints")
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["format"] == "deepspeed" and state["world_size"] == 2
    assert {"rank-0.safetensors", "rank-1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    names = {p.name for p in (checkpoint / "deepspeed").iterdir()}
    assert any("zero_pp_rank_0_" in n for n in names) and any("zero_pp_rank_1_" in n for n in names), names


@pytest.mark.slow
@needs_deepspeed
def test_zero2_bf16_trains_like_ddp_autocast(ds_runs):
    losses = [r["loss"] for r in records(ds_runs / "zero2-bf16", "train")]
    expected = [r["loss"] for r in records(ds_runs / "ddp-bf16", "train")]
    assert len(losses) == len(expected) == 12 and np.isfinite(losses).all()
    np.testing.assert_allclose(losses, expected, rtol=2e-3)


@pytest.mark.slow
@needs_deepspeed
def test_seekrec_train_deepspeed_runs_a_seed_config(ds_runs, sim_data_dir):
    """``seekrec train --deepspeed seed.json`` (bf16, ZeRO-2, AdamW, WarmupLR with "auto" values) under torchrun:
    the JSON's values in config.json, DeepSpeed's WarmupLR in the logged lr, fp32 best weights that fit a fresh
    model, DeepSpeed checkpoints in the run directory."""
    run = RunDir(ds_runs / "cli")
    results = run.read_results()
    assert results["strategy"] == "deepspeed" and results["world_size"] == 2 and results["precision"] == "bf16"
    train = run.read_config()["train"]
    assert (train["lr"], train["weight_decay"], train["clip_norm"], train["warmup_steps"]) == (3e-3, 0.01, 1.0, 3)
    assert json.loads((run.path / "ds_config.json").read_text()) == CLI_SEED
    lrs = [r["lr"] for r in records(run.path, "train")]
    # DeepSpeed's WarmupLR exactly as it is: warmup_min_lr for the first update (set at construction), then the
    # default log warmup from iteration 0 (log 1 = 0) over warmup_num_steps; warmup_max_lr "auto" = train.lr
    warmup = [0.0] + [3e-3 * math.log(iteration + 1) / math.log(3) for iteration in range(3)]
    np.testing.assert_allclose(lrs[:4], warmup, rtol=1e-6, atol=1e-12)
    assert lrs[4:] == pytest.approx([3e-3] * (len(lrs) - 4))
    weights = run.read_best_weights()
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    run.load_best(run.read_model().build())
    assert json.loads((latest_checkpoint(run.checkpoints) / "state.json").read_text())["format"] == "deepspeed"


@pytest.mark.gpu
@needs_deepspeed
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (DeepSpeed's fp16 loss scaling)")
def test_the_seed_config_trains_in_fp16_on_a_gpu(sim_data_dir, tmp_path):
    """The seed config as is (fp16 with dynamic loss scaling, ZeRO-2, WarmupLR) in one process on a GPU, through the
    CLI, resumed once: finite losses, fp32 best weights. (Not run where this was written: no GPU there.)"""
    ds = _write(tmp_path / "ds_config.json", SEED)
    argv = ["train", "--data", str(sim_data_dir), "--out", str(tmp_path / "run"), "--deepspeed", str(ds),
            *[o for o in EXPERIMENT if not o.startswith("train.device")], "train.device=cuda"]
    assert main(argv) == 0
    assert main([*argv, "train.max_epochs=3"]) == 0  # resumes from the DeepSpeed checkpoint of epoch 2
    run = RunDir(tmp_path / "run")
    assert run.read_results()["precision"] == "fp16" and run.read_results()["epochs"] == 3
    assert np.isfinite([r["loss"] for r in records(run.path, "train")]).all()
    assert {t.dtype for t in run.read_best_weights().values() if t.is_floating_point()} == {torch.float32}
