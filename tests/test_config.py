"""The one dataclass-from-TOML loader: errors name the key and its origin, partial tables keep defaults,
and every config class loads from a TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.config import load_config
from seekrec.data.simulator import SimulatorConfig
from seekrec.demo.run import DemoConfig
from seekrec.online.trainer import OnlineTrainerConfig
from seekrec.pipeline.config import PipelineConfig
from seekrec.serving.settings import ServeSettings
from seekrec.training.experiment import ExperimentConfig


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[train]\nlrr = 0.1\n")
    with pytest.raises(ValueError, match=rf"^{path}: unknown key 'lrr' in \[train\]; valid: .*\blr\b"):
        ExperimentConfig.load(path)


def test_unknown_key_from_an_override_says_command_line(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[train]\nlr = 0.1\n")
    with pytest.raises(ValueError, match=r"^command line override 'train\.lrr=1': unknown key 'lrr' in \[train\]"):
        ExperimentConfig.load(path, ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"^command line.*unknown key 'bogus'"):
        load_config(SimulatorConfig, None, values={"bogus": 1})


def test_bad_values_and_missing_files_name_the_source(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[train]\nlr = -1.0\n")
    with pytest.raises(ValueError, match=rf"^{path}: train\.lr must be > 0"):
        ExperimentConfig.load(path)
    with pytest.raises(ValueError, match="no such config file"):
        ExperimentConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match=r"train\.betas takes 2 values, got 3"):
        ExperimentConfig.load(None, ["train.betas=[0.9, 0.98, 0.5]"])


def test_partial_table_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[two_tower.train]\nlr = 0.01\n[din.model]\nembed_dim = 8\n[features]\nwindows_days = [2, 3]\n")
    config = PipelineConfig.load(path)
    assert config.two_tower.train.lr == 0.01 and config.two_tower.train.batch_size == 512
    assert config.two_tower.train.select_metric == "recall@100" and config.two_tower.loss.n_negatives == 256
    assert config.din.model == {"activation": "relu", "key_columns": ["genres"], "embed_dim": 8}
    assert config.features.windows_days == (2.0, 3.0)
    assert PipelineConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("override", "key"), [("two_tower.model.dimm=3", "dimm"), ("din.model.embedd_dim=8", "embedd_dim")])
def test_pipeline_model_typo_fails_at_load(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^command line override '{override}': unknown key '{key}' in "
                                         r"\[(two_tower|din)\.model\]; valid: .*embed_dim"):
        PipelineConfig.load(None, [override])


def test_online_trainer_config_loads_from_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'registry = "reg"\nevent_log = "e.db"\ndataset = "data"\nstate_dir = "state"\n'
                           "lr = 0.001\nmax_events = 50\n[loss]\nname = \"bce\"\n")
    config = load_config(OnlineTrainerConfig, path, ["replay_ratio=0"])
    assert config.lr == 0.001 and config.max_events == 50 and config.replay_ratio == 0
    assert config.loss.name == "bce" and config.consumer == "online-trainer" and config.events_per_step == 64
    with pytest.raises(ValueError, match="missing state_dir: .*--state-dir"):
        load_config(OnlineTrainerConfig, None, values={"registry": "r", "event_log": "e", "dataset": "d"})


def test_demo_and_simulator_configs_load_from_toml(tmp_path: Path) -> None:
    demo = load_config(DemoConfig, _toml(tmp_path, 'workdir = "runs/d"\nquick = true\nworkers = 2\n'))
    assert demo.workdir == Path("runs/d") and demo.quick and demo.workers == 2 and demo.live_seconds is None
    sim = load_config(SimulatorConfig, _toml(tmp_path, "n_users = 50\nn_items = 40\ndrift_per_day = 0.5\n"))
    assert (sim.n_users, sim.n_items, sim.drift_per_day, sim.seed) == (50, 40, 0.5, 0)
    with pytest.raises(ValueError, match=r"x\.toml: SimulatorConfig\.n_users"):
        load_config(SimulatorConfig, _toml(tmp_path, "n_users = 0\n"))


def test_serve_settings_load_their_table_with_nested_arms(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[serve]\nregistry = "reg"\nevent_log = "e.db"\n[serve.experiment]\nname = "x"\n'
                           'arms = [{name = "a", version = "v1"}]\n')
    settings = ServeSettings.load(path, ["max_batch=8"], port=9001)
    assert settings.registry == Path("reg") and settings.port == 9001 and settings.max_batch == 8
    assert settings.experiment.name == "x" and settings.experiment.arms[0].version == "v000001"


def test_shipped_configs_load() -> None:
    """Every TOML file in configs/ loads as the config class its name says, so none rots silently."""
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        if path.name.startswith("stream-train"):
            assert load_config(OnlineTrainerConfig, path).publish_every_events >= 1
        elif path.name.startswith("serve"):
            assert ServeSettings.load(path).experiment.arms
        elif path.stem.endswith("llm-pretrain"):
            from seekrec.llm.pretrain import PretrainConfig

            assert load_config(PretrainConfig, path).model.num_hidden_layers >= 1
        elif "-llm-" in path.stem:
            from seekrec.llm.finetune import FinetuneConfig

            assert FinetuneConfig.load(path).task in ("rerank", "pointwise")
        elif path.stem.endswith("distill"):
            from seekrec.llm.distill import DistillConfig

            assert DistillConfig.load(path).distill.alpha >= 0
        elif path.stem.endswith("pipeline"):
            assert PipelineConfig.load(path).stages.k >= 1
        elif path.stem.startswith("experiments"):  # layered experiments for `seekrec serve --experiments`
            from seekrec.experiments.definition import ExperimentsConfig

            assert ExperimentsConfig.load(path).layers
        elif path.stem.endswith("-world"):  # a simulator world for `seekrec data simulate --config`
            assert load_config(SimulatorConfig, path).n_users >= 1
        else:
            assert ExperimentConfig.load(path).model.name in ("sasrec", "deepseek")
