"""Experiment definitions: the demo file loads, and every mistake is one ValueError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.experiments.definition import (
    METRICS,
    Arm,
    Experiment,
    ExperimentsConfig,
    Guardrail,
    Layer,
    Metrics,
    Rollout,
)

DEMO = Path(__file__).resolve().parents[2] / "configs" / "experiments-demo.toml"

AB = """
[[layers]]
name = "model"
[[layers.experiments]]
name = "ab"
arms = [{ name = "a", share = 0.5 }, { name = "b", share = 0.5 }]
"""


def _load(tmp_path: Path, text: str) -> ExperimentsConfig:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return ExperimentsConfig.load(path)


def test_demo_config_loads() -> None:
    config = ExperimentsConfig.load(DEMO)
    assert [layer.name for layer in config.layers] == ["model", "explore"]
    assert config.layers[1].salt == "explore-2024" and config.layers[0].salt == "model"  # salt defaults to name
    (rollout,) = config.rollouts
    assert rollout.name == "online-model-rollout" and rollout.control == "pinned" and rollout.treatment == "online"
    assert rollout.arm("pinned").version == "v000003" and rollout.arm("online").version == "current"
    assert rollout.rollout == Rollout(steps=10, min_users_per_step=1000, min_seconds_per_step=600.0)
    assert {g.metric: (g.max, g.max_relative_drop) for g in rollout.guardrails} == {
        "ctr": (None, 0.10), "latency_p99_ms": (50.0, None), "error_rate": (0.01, None)}
    explore = config.experiment("epsilon-greedy")
    assert explore.control == "greedy"  # the first arm by default
    assert [(a.share, a.params["explore_epsilon"], a.version) for a in explore.arms] == [(0.5, 0.0, None),
                                                                                         (0.5, 0.1, None)]
    assert explore.metrics == Metrics("ctr", ("coverage", "novelty", "value_per_user"))


def test_experiments_table_inside_a_serve_config(tmp_path: Path) -> None:
    text = '[serve]\nregistry = "registry"\n' + AB.replace("[[layers", "[[experiments.layers")
    config = _load(tmp_path, text)
    assert config.experiment("ab").arms[1].name == "b"


def test_rollout_shares_and_stage_level() -> None:
    rollout = Rollout(steps=4, alpha=0.08)
    assert [rollout.share(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rollout.stage_alpha == pytest.approx(0.02)
    with pytest.raises(ValueError, match="0..4"):
        rollout.share(5)


def test_metric_names_are_a_fixed_registry() -> None:
    assert METRICS == ("ctr", "clicks_per_user", "value_per_user", "coverage", "novelty", "latency_p99_ms")
    with pytest.raises(ValueError, match="unknown metric 'clicks'"):
        Metrics("clicks")


LAYER_MODEL = '[[layers]]\nname = "model"\n'
ROLLOUT_ARMS = 'arms = [{ name = "c", version = "v3" }, { name = "t" }]\n'

MISTAKES = {
    "unknown metric": (AB + 'metrics = { primary = "ctr", secondary = ["dwell"] }\n', "unknown metric 'dwell'"),
    "shares": (AB.replace("share = 0.5 }]", "share = 0.4 }]"), "shares must sum to 1, got 0.9"),
    "missing share": (AB.replace(', share = 0.5 }]', ' }]'), "arm 'b' has no share"),
    "duplicate arm": (AB.replace('name = "b"', 'name = "a"'), "arm names must be unique"),
    "duplicate experiment": (AB + '[[layers]]\nname = "other"\n[[layers.experiments]]\nname = "ab"\n'
                             'arms = [{ name = "x", share = 1.0 }]\n', "experiment names must be unique, repeated: ab"),
    "duplicate layer": (AB + AB.replace('name = "ab"', 'name = "cd"'), "layer names must be unique"),
    "same salt": (AB + '[[layers]]\nname = "other"\nsalt = "model"\n[[layers.experiments]]\nname = "cd"\n'
                  'arms = [{ name = "x", share = 1.0 }]\n', "layer salts must be unique"),
    "overlap": (LAYER_MODEL + '[[layers.experiments]]\nname = "e1"\nbuckets = [0, 6000]\narms = [{ name = "a", '
                'share = 1.0 }]\n[[layers.experiments]]\nname = "e2"\nbuckets = [5000, 10000]\n'
                'arms = [{ name = "a", share = 1.0 }]\n', "'e1' [0, 6000] and 'e2' [5000, 10000] overlap"),
    "whole layer shared": (AB + '[[layers.experiments]]\nname = "e2"\nbuckets = [0, 10]\n'
                           'arms = [{ name = "a", share = 1.0 }]\n', "'ab' owns the whole layer"),
    "bucket range": (AB + 'buckets = [0, 20000]\n', "0 <= start < end <= 10000"),
    "rollout arms": (AB.replace('share = 0.5 }]', 'share = 0.5 }, { name = "c", share = 0.5 }]')
                     .replace('{ name = "a", share = 0.5 }', '{ name = "a" }')
                     + "[layers.experiments.rollout]\n", "exactly two arms"),
    "rollout shares": (AB + "[layers.experiments.rollout]\n", "arm 'a' sets share"),
    "rollout alpha": (LAYER_MODEL + '[[layers.experiments]]\nname = "r"\n' + ROLLOUT_ARMS
                      + "[layers.experiments.rollout]\nalpha = 1.5\n", "rollout.alpha must lie in (0, 1)"),
    "control": (AB + 'control = "z"\n', "control 'z' is not one of its arms"),
    "version": (AB.replace('share = 0.5 }]', 'share = 0.5, version = "latest" }]'), "version must be 'current'"),
    "guardrail kind": (AB + 'guardrails = [{ metric = "ctr", max = 0.5 }]\n', "takes max_relative_drop, not max"),
    "guardrail bounds": (AB + 'guardrails = [{ metric = "latency_p99_ms", max = 5.0, max_relative_drop = 0.1 }]\n',
                         "exactly one of max"),
    "guardrail metric": (AB + 'guardrails = [{ metric = "p50", max = 5.0 }]\n', "unknown guardrail metric 'p50'"),
    "guardrail min_users": (AB + 'guardrails = [{ metric = "error_rate", max = 0.01, min_users = 1 }]\n',
                            "min_users must be an integer >= 2"),
    "nested params": (AB.replace('share = 0.5 }]', 'share = 0.5, params = { k = { a = 1 } } }]'),
                      "params.k must be a finite number"),
    "two version layers": (LAYER_MODEL + '[[layers.experiments]]\nname = "r"\n' + ROLLOUT_ARMS
                           + '[layers.experiments.rollout]\n[[layers]]\nname = "rank"\n[[layers.experiments]]\n'
                             'name = "x"\n'
                             'arms = [{ name = "a", share = 1.0, version = "current" }]\n',
                           "only one layer may choose the model version"),
    "params in two layers": (AB.replace('share = 0.5 }]', 'share = 0.5, params = { k = 20 } }]')
                             + '[[layers]]\nname = "rank"\n[[layers.experiments]]\nname = "x"\n'
                               'arms = [{ name = "a", share = 1.0, params = { k = 10 } }]\n',
                             "params key 'k' is set in layers 'model' and 'rank'"),
    "typo": (AB + "min_user = 3\n", "unknown key 'min_user'"),
    "bad name": (AB.replace('name = "ab"', 'name = "a b"'), "experiment name 'a b'"),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_every_mistake_is_one_clear_value_error(tmp_path: Path, case: str) -> None:
    text, fragment = MISTAKES[case]
    with pytest.raises(ValueError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert fragment in message, message
    assert str(tmp_path / "experiments.toml") in message and "\n" not in message


def test_valid_variants_load(tmp_path: Path) -> None:
    two = _load(tmp_path, LAYER_MODEL + '[[layers.experiments]]\nname = "e1"\nbuckets = [0, 5000]\n'
                'arms = [{ name = "a", share = 1.0 }]\n[[layers.experiments]]\nname = "e2"\nbuckets = [5000, 10000]\n'
                'arms = [{ name = "a", share = 0.25 }, { name = "b", share = 0.75 }]\n')
    assert [e.bucket_range for e in two.layers[0].experiments] == [(0, 5000), (5000, 10000)]
    short = Arm("x", 1, "v7")
    assert short.version == "v000007" and short.share == 1.0


def test_python_construction_validates_too() -> None:
    arms = (Arm("c", version="v1"), Arm("t"))
    exp = Experiment("r", arms, rollout=Rollout(), guardrails=(Guardrail("ctr", max_relative_drop=0.1),))
    assert exp.treatment == "t" and exp.control == "c"
    with pytest.raises(ValueError, match="has no rollout"):
        _ = Experiment("ab", (Arm("a", 1.0),)).treatment
    with pytest.raises(ValueError, match="compares treatment with control"):
        Experiment("ab", (Arm("a", 1.0),), guardrails=(Guardrail("ctr", max_relative_drop=0.1),))
    with pytest.raises(ValueError, match="needs at least one experiment"):
        Layer("empty", ())
    with pytest.raises(ValueError, match="one guardrail per metric"):
        Experiment("ab", (Arm("a", 1.0),), guardrails=(Guardrail("error_rate", max=0.1),) * 2)
