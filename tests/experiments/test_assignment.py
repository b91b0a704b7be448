"""Layered assignment: shares, independent layers, monotone rollouts, stable hashes, and SRM on a broken split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from seekrec.evaluation.experiments import srm_check
from seekrec.experiments.assignment import Assigner, arm_salt, bucket
from seekrec.experiments.definition import Arm, Experiment, ExperimentsConfig, Layer, Rollout
from seekrec.serving.experiments import N_BUCKETS as SERVING_BUCKETS
from seekrec.serving.experiments import bucket as serving_bucket

DEMO = ExperimentsConfig.load(Path(__file__).resolve().parents[2] / "configs" / "experiments-demo.toml")
ROLLOUT = "online-model-rollout"
USERS = [f"user-{i}" for i in range(100_000)]

# three arms 20/30/50 in one layer; a 50/50 layer; two experiments splitting a third layer 30/70
CONFIG = ExperimentsConfig((
    Layer("ranker", (Experiment("three", (Arm("a", 0.2), Arm("b", 0.3), Arm("c", 0.5))),)),
    Layer("ui", (Experiment("half", (Arm("x", 0.5, params={"k": 20}), Arm("y", 0.5, params={"k": 30}))),)),
    Layer("slots", (Experiment("left", (Arm("l", 1.0),), buckets=(0, 3000)),
                    Experiment("right", (Arm("r1", 0.5, "v2"), Arm("r2", 0.5, "current")), buckets=(3000, 10_000)))),
))


@pytest.fixture(scope="module")
def assigned() -> list[tuple[str, str, str]]:
    """(ranker arm, ui arm, slots arm) of 100k synthetic users."""
    assigner = Assigner(CONFIG)
    return [tuple(e.arm.name for e in assigner.assign(u).layers) for u in USERS]  # type: ignore[misc, union-attr]


def test_bucket_matches_the_serving_hash() -> None:
    assert SERVING_BUCKETS == 10_000
    for user in USERS[:5000]:
        assert bucket("exp", user) == serving_bucket("exp", user)


def test_shares_within_one_and_a_half_points(assigned: list[tuple[str, str, str]]) -> None:
    n = len(assigned)
    for position, shares in enumerate(({"a": 0.2, "b": 0.3, "c": 0.5}, {"x": 0.5, "y": 0.5},
                                       {"l": 0.3, "r1": 0.35, "r2": 0.35})):
        counts = Counter(row[position] for row in assigned)
        assert set(counts) == set(shares)
        for arm, share in shares.items():
            assert abs(counts[arm] / n - share) < 0.015, (arm, counts)


def test_layers_are_orthogonal(assigned: list[tuple[str, str, str]]) -> None:
    for first, second in ((0, 1), (0, 2), (1, 2)):
        table = Counter((row[first], row[second]) for row in assigned)
        rows = sorted({k[0] for k in table})
        cols = sorted({k[1] for k in table})
        p = stats.chi2_contingency(np.array([[table[r, c] for c in cols] for r in rows])).pvalue
        assert p > 0.001, (first, second, p)
    # the test can fail: arms hashed with the layer's own salt are fully dependent on its experiment split
    salt_twice = Counter((bucket("slots", u) < 3000, bucket("slots", u) < 6500) for u in USERS[:20_000])
    table = np.array([[salt_twice[a, b] for b in (False, True)] for a in (False, True)])
    assert stats.chi2_contingency(table).pvalue < 1e-100


def test_experiments_of_a_layer_own_disjoint_users() -> None:
    assigner = Assigner(CONFIG)
    for user in USERS[:5000]:
        slots = assigner.assign(user).layer("slots")
        assert slots.experiment == ("left" if slots.bucket < 3000 else "right")


def test_unowned_buckets_get_no_arm() -> None:
    half = Experiment("e", (Arm("a", 1.0, params={"k": 5}),), buckets=(0, 5000))
    config = ExperimentsConfig((Layer("half", (half,)),))
    assigner = Assigner(config)
    entries = [assigner.assign(u) for u in USERS[:4000]]
    outside = [e for e in entries if e.layers[0].experiment is None]
    assert 0.45 < len(outside) / len(entries) < 0.55
    assert all(e.layers[0].arm is None and e.params == {} and e.arms == {} for e in outside)
    inside = next(e for e in entries if e.layers[0].experiment == "e")
    assert inside.params == {"k": 5} and inside.arms == {"e": "a"} and inside.version is None


def test_assignment_merges_params_and_version() -> None:
    found = Assigner(CONFIG).assign("user-7")
    assert found.params["k"] in (20, 30)
    right = next(a for a in map(Assigner(CONFIG).assign, USERS) if a.layer("slots").experiment == "right")
    assert right.version in ("v000002", "current")
    assert set(right.arms) == {"three", "half", "right"}


def test_rollout_is_monotone_and_follows_the_stage() -> None:
    users = USERS[:12_000]
    treated_before: set[str] = set()
    base = Assigner(ExperimentsConfig(DEMO.layers[:1]))  # the model layer alone
    for stage in range(11):
        assigner = base.with_stages({ROLLOUT: stage})
        entries = [assigner.assign(u).layer("model") for u in users]
        assert all(e.stage == stage for e in entries)
        treated = {u for u, e in zip(users, entries) if e.arm.name == "online"}  # type: ignore[union-attr]
        assert treated_before <= treated, f"stage {stage} moved {len(treated_before - treated)} users back"
        assert abs(len(treated) / len(users) - stage / 10) < 0.015
        treated_before = treated
    assert len(treated_before) == len(users)
    # the rollout hash is not the layer's: treatment at 50% is independent of the layer bucket
    half = base.with_stages({ROLLOUT: 5})
    low = [half.assign(u).layer("model") for u in users[:6000]]
    split = Counter((e.bucket < 5000, e.arm.name) for e in low)  # type: ignore[union-attr]
    table = np.array([[split[b, arm] for arm in ("online", "pinned")] for b in (False, True)])
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_rollout_not_started_serves_control() -> None:
    assigner = Assigner(DEMO)  # no stages: every rollout at stage 0
    assert {assigner.assign(u).layer("model").arm.name for u in USERS[:2000]} == {"pinned"}  # type: ignore[union-attr]
    assert assigner.assign("u").version == "v000003"


# computed once: any change to the hashing or the arm mapping moves users, and shows here first
GOLDEN = {
    "u1": ((4907, "online"), (3351, "epsilon")),
    "u2": ((9434, "online"), (5096, "greedy")),
    "u3": ((3274, "pinned"), (4210, "epsilon")),
    "u4": ((2177, "pinned"), (8178, "epsilon")),
    "u5": ((1737, "online"), (6149, "epsilon")),
    "u6": ((4887, "online"), (7115, "epsilon")),
}


def test_assignment_is_stable_across_instances_and_processes() -> None:
    first, fresh = Assigner(DEMO, {ROLLOUT: 5}), Assigner(ExperimentsConfig.load(
        Path(__file__).resolve().parents[2] / "configs" / "experiments-demo.toml"), {ROLLOUT: 5})
    for user, expected in GOLDEN.items():
        got = tuple((e.bucket, e.arm.name) for e in fresh.assign(user).layers)  # type: ignore[union-attr]
        assert got == expected and first.assign(user) == fresh.assign(user)
    model = DEMO.layers[0]
    assert arm_salt(model, model.experiments[0]) == "model/online-model-rollout"


def test_srm_check_flags_a_broken_split() -> None:
    config = ExperimentsConfig((Layer("model", (Experiment("ab", (Arm("control", 0.5), Arm("treatment", 0.5))),)),))
    assigner = Assigner(config)
    arms = [assigner.assign(u).layer("model").arm.name for u in USERS[:20_000]]  # type: ignore[union-attr]
    counts = Counter(arms)
    healthy = srm_check([counts["control"], counts["treatment"]], [0.5, 0.5])
    assert not healthy.mismatch and healthy.p_value > 0.01
    # a treatment that crashes for 1 in 12 of its users before they are logged: about 52/48
    logged = Counter(arm for user, arm in zip(USERS, arms) if arm == "control" or bucket("crash", user) >= 833)
    share = logged["control"] / (logged["control"] + logged["treatment"])
    assert 0.515 < share < 0.525
    broken = srm_check([logged["control"], logged["treatment"]], [0.5, 0.5])
    assert broken.mismatch and broken.p_value < 1e-5
    assert srm_check([10_400, 9_600], [0.5, 0.5]).mismatch


def test_stages_are_validated() -> None:
    with pytest.raises(ValueError, match="not a rollout experiment"):
        Assigner(DEMO, {"epsilon-greedy": 1})
    with pytest.raises(ValueError, match="0..10"):
        Assigner(DEMO, {ROLLOUT: 11})
    small = ExperimentsConfig((Layer("m", (Experiment("r", (Arm("c"), Arm("t")), rollout=Rollout(steps=2)),)),))
    full = Assigner(small, {"r": 2})
    assert {full.assign(u).layer("m").arm.name for u in USERS[:300]} == {"t"}  # type: ignore[union-attr]
