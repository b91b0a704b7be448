"""A/B assignment: stable, proportional to the weights, reshuffled by a new experiment name."""

from __future__ import annotations

from collections import Counter

import pytest

from seekrec.serving.experiments import N_BUCKETS, ArmAssigner, bucket
from seekrec.serving.settings import ArmSettings, ExperimentSettings

USERS = [f"user-{i}" for i in range(10_000)]


def _experiment(name: str, *weights: float) -> ExperimentSettings:
    return ExperimentSettings(name, tuple(ArmSettings(f"arm{i}", "current", w) for i, w in enumerate(weights)))


def test_assignment_is_deterministic() -> None:
    first, second = ArmAssigner(_experiment("exp", 1, 1)), ArmAssigner(_experiment("exp", 1, 1))
    assert [first.assign(u).name for u in USERS[:500]] == [second.assign(u).name for u in USERS[:500]]
    assert bucket("exp", "u1") == bucket("exp", "u1") and 0 <= bucket("exp", "u1") < N_BUCKETS


@pytest.mark.parametrize("weights", [(1, 1), (0.9, 0.1), (2, 1, 1)])
def test_assignment_is_proportional_to_weights(weights: tuple[float, ...]) -> None:
    assigner = ArmAssigner(_experiment("exp", *weights))
    counts = Counter(assigner.assign(u).name for u in USERS)
    for i, weight in enumerate(weights):
        share = counts[f"arm{i}"] / len(USERS)
        assert abs(share - weight / sum(weights)) < 0.02, (weights, counts)


def test_new_experiment_name_reshuffles_users() -> None:
    a, b = ArmAssigner(_experiment("exp-a", 1, 1)), ArmAssigner(_experiment("exp-b", 1, 1))
    moved = sum(a.assign(u).name != b.assign(u).name for u in USERS)
    assert 0.4 < moved / len(USERS) < 0.6  # independent halves: about half the users change arm


def test_arm_and_experiment_validation() -> None:
    assert ArmSettings.parse("control=v3:0.25") == ArmSettings("control", "v000003", 0.25)
    assert ArmSettings.parse("live=current") == ArmSettings("live", "current", 1.0)
    for spec in ("control", "control=", "control=v3:-1", "control=latest:1", "bad name=v1"):
        with pytest.raises(ValueError):
            ArmSettings.parse(spec)
    with pytest.raises(ValueError, match="unique"):
        ExperimentSettings("e", (ArmSettings("a"), ArmSettings("a")))
    with pytest.raises(ValueError, match="at least one arm"):
        ExperimentSettings("e", ())
    exp = ExperimentSettings("e", ({"name": "a", "version": "v1", "weight": 2},))  # type: ignore[arg-type]
    assert exp.arms[0] == ArmSettings("a", "v000001", 2.0)
