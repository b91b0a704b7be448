"""The pure logic of benchmarks/tune.py: study validation, the choice on validation, run reuse."""

import json
from pathlib import Path

import pytest

from benchmarks.tune import ROOT, choose, ensure_runs, expected_config, read_study, router_load, run_path, run_state

STUDY = """
name = "t"
compare = ["deepseek", "sasrec"]
[[candidates]]
label = "ds-a"
family = "deepseek"
config = "configs/ml-100k-deepseek.toml"
overrides = ["model.use_item_features=true"]
[[candidates]]
label = "sas"
family = "sasrec"
config = "configs/ml-100k-sasrec.toml"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_the_shipped_study_reads():
    study = read_study(ROOT / "benchmarks/studies/ml100k.toml")
    assert study.compare == ("deepseek", "sasrec") and {"ds-base", "sasrec-base"} <= {c.label for c in study.candidates}


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.replace('"ds-a"', '"../x"'), "filesystem-safe"),
    (lambda s: s.replace('"sas"', '"ds-a"'), "used twice"),
    (lambda s: s.replace('compare = ["deepseek", "sasrec"]', 'compare = ["deepseek", "bert"]'), "compare"),
    (lambda s: s.replace("ml-100k-sasrec.toml", "nope.toml"), "not found"),
    (lambda s: s.replace('["model.use_item_features=true"]', '["train.seed=3"]'), "train.seed"),
])
def test_bad_studies_are_named(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        read_study(write(tmp_path, edit(STUDY)))


def test_choice_is_the_best_validation_mean_per_family_and_a_tie_keeps_the_first():
    family = {"a": "ds", "b": "ds", "c": "ds", "s": "sas"}
    # b has the best single seed, c the best mean
    assert choose({"a": [0.10, 0.10], "b": [0.20, 0.01], "c": [0.12, 0.12], "s": [0.05]}, family) == \
        {"ds": "c", "sas": "s"}
    assert choose({"a": [0.1], "b": [0.1], "s": [0.0]}, family)["ds"] == "a"


def test_run_state_reuses_only_a_finished_run_of_the_same_config(tmp_path):
    study = read_study(write(tmp_path, STUDY))
    cand = study.candidate("ds-a")
    assert run_state(cand, 0, tmp_path, "sha") == "train"
    run = run_path(tmp_path, "ds-a", 0)
    run.mkdir(parents=True)
    assert run_state(cand, 0, tmp_path, "sha") == "partial"
    (run / "config.json").write_text(json.dumps({**expected_config(cand, 0), "data_manifest_sha256": "sha"}))
    (run / "results.json").write_text("{}")
    assert run_state(cand, 0, tmp_path, "sha") == "reuse"
    with pytest.raises(ValueError, match="other data"):
        run_state(cand, 0, tmp_path, "other")
    other_seed = run_path(tmp_path, "ds-a", 1)  # seed 0's files under seed1/
    other_seed.mkdir()
    for name in ("config.json", "results.json"):
        (other_seed / name).write_text((run / name).read_text())
    with pytest.raises(ValueError, match="train.seed: study 1, run 0"):
        run_state(cand, 1, tmp_path, "sha")


def test_a_run_from_before_a_config_field_existed_is_reused_when_the_field_keeps_its_default(tmp_path):
    cand = read_study(write(tmp_path, STUDY)).candidate("ds-a")
    run = run_path(tmp_path, "ds-a", 0)
    run.mkdir(parents=True)
    stored = {**expected_config(cand, 0), "data_manifest_sha256": "sha"}
    del stored["train"]["strategy"]  # trained before train.strategy was added
    (run / "config.json").write_text(json.dumps(stored))
    (run / "results.json").write_text("{}")
    assert run_state(cand, 0, tmp_path, "sha") == "reuse"
    stored["train"]["lr"] = 0.5  # a real difference is still named
    (run / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="train.lr"):
        run_state(cand, 0, tmp_path, "sha")


def test_unfinished_runs_are_not_trained_over_unless_asked(tmp_path):
    cand = read_study(write(tmp_path, STUDY)).candidate("sas")
    with pytest.raises(ValueError, match="--retrain-partial"):
        ensure_runs([(cand, 0)], {("sas", 0): "partial"}, tmp_path, tmp_path, 1, 1)


def test_router_load_averages_the_best_epochs_training_steps(tmp_path: Path) -> None:
    rows = [{"kind": "train", "epoch": 0, "moe_max_load_ratio": 3.0},
            {"kind": "train", "epoch": 1, "moe_max_load_ratio": 1.2},
            {"kind": "train", "epoch": 1, "moe_max_load_ratio": 1.4},
            {"kind": "valid", "epoch": 2, "ndcg@10": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert router_load(tmp_path, best_epoch=2) == pytest.approx(1.3)  # the epoch ending at validation 2
    assert router_load(tmp_path, best_epoch=None) == pytest.approx(5.6 / 3)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "epoch": 0, "loss": 1.0}) + "\n")
    assert router_load(tmp_path, best_epoch=1) is None  # no router: SASRec
