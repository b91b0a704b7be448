import pytest

from seekrec.config import ExperimentConfig, apply_overrides


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[model]\nname = "sasrec"\ndim = 32\n[train]\nlr = 0.01\nbetas = [0.9, 0.99]\n')
    cfg = ExperimentConfig.load(path, ["train.lr=3e-4", "model.dim=16", "loss.name=bce", "data.max_len=20"])
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.99)
    assert cfg.model == {"name": "sasrec", "dim": 16}
    assert cfg.loss.name == "bce" and cfg.data.max_len == 20


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], "unknown key"),
        (["bogus.x=1"], "unknown config section"),
        (["train.precision=fp8"], "precision"),
        (["loss.name=hinge"], "name"),
        (["data.split=random"], "data.split"),
        (["train.lr"], "section.key=value"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.load(None, overrides)


def test_invalid_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train\nlr=1")
    with pytest.raises(ValueError, match="invalid TOML"):
        ExperimentConfig.load(path)


def test_overrides_parse_json_values():
    out = apply_overrides({}, ["a.b=[1, 2]", "a.c=true", "a.d=text"])
    assert out == {"a": {"b": [1, 2], "c": True, "d": "text"}}
