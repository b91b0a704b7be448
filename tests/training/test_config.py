import pytest

from seekrec.config import apply_overrides
from seekrec.training.experiment import ExperimentConfig


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[model]\nname = "sasrec"\ndim = 32\n[train]\nlr = 0.01\nbetas = [0.9, 0.99]\n')
    cfg = ExperimentConfig.load(path, ["train.lr=3e-4", "model.dim=16", "loss.name=bce", "data.max_len=20"])
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.99)
    assert cfg.model.name == "sasrec" and cfg.model.params == {"dim": 16} and not cfg.model.use_item_features
    assert cfg.loss.name == "bce" and cfg.data.max_len == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], "unknown key"),
        (["bogus.x=1"], "unknown config section"),
        (["train.precision=fp8"], "precision"),
        (["train.strategy=zero3"], r"train.strategy must be one of \('ddp', 'fsdp', 'deepspeed'\)"),
        (["train.strategy=FSDP"], "train.strategy"),
        (["train.strategy=fsdp", "train.compile=true"], "train.compile is not supported with train.strategy='fsdp'"),
        (["train.strategy=deepspeed"], "train.strategy = 'deepspeed' goes with train.deepspeed_config"),
        (["train.deepspeed_config=ds.json"], "train.strategy = 'deepspeed' goes with train.deepspeed_config"),
        (["train.strategy=deepspeed", "train.deepspeed_config=ds.json", "train.compile=true"],
         "train.compile is not supported with train.strategy='deepspeed'"),
        (["train.dist_timeout_s=0"], "train.dist_timeout_s must be > 0"),
        (["train.dist_timeout_s=-5"], "train.dist_timeout_s must be > 0"),
        (["loss.name=hinge"], "name"),
        (["data.split=random"], "data.split"),
        (["train.lr"], "section.key=value"),
        (["model.name=sasrec", "model.dimm=64"], "dimm"),
        (["model.name=sasrec", "model.dim=0"], "dim"),
        (["model.name=gru4rec"], "unknown model 'gru4rec'"),
        (["model.name=sasrec", "model.n_items=10"], "model.n_items comes from the data"),
        (["model.name=deepseek", "model.use_item_features=yes"], "true or false"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.load(None, overrides)


def test_strategy_defaults_to_ddp_and_takes_fsdp():
    assert ExperimentConfig.load(None).train.strategy == "ddp"
    assert ExperimentConfig.load(None, ["train.strategy=fsdp"]).train.strategy == "fsdp"


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nlr=1")
    with pytest.raises(ValueError, match="invalid TOML"):
        ExperimentConfig.load(path)


def test_overrides_parse_json_values():
    out = apply_overrides({}, ["a.b=[1, 2]", "a.c=true", "a.d=text"])
    assert out == {"a": {"b": [1, 2], "c": True, "d": "text"}}


@pytest.mark.parametrize("name", ["sasrec", "deepseek"])
def test_model_section_round_trips_through_its_flat_table(name):
    cfg = ExperimentConfig.load(None, [f"model.name={name}", "model.use_item_features=true", "model.dim=32"])
    assert cfg.model.use_item_features and cfg.model.params == {"dim": 32}
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg and cfg.to_dict()["model"] == {"name": name, "use_item_features": True, "dim": 32}
