"""``ArmTraffic``: a per-arm learner's filter assigns users exactly as the server does, and follows a rollout."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.experiments.arm_traffic import ArmTraffic, parse_arm_spec
from seekrec.experiments.assignment import Assigner
from seekrec.experiments.definition import Arm, Experiment, ExperimentsConfig, Layer, Rollout
from seekrec.experiments.rollout_store import RolloutStore

USERS = [f"user-{i}" for i in range(2000)]
AB = ExperimentsConfig((Layer("model", (
    Experiment("explore-test", (Arm("greedy", 0.5, "channel:greedy"),
                                Arm("explore", 0.5, "channel:explore", {"explore_method": "thompson"}))),)),))
ROLLOUT = ExperimentsConfig((Layer("model", (
    Experiment("roll", (Arm("old", version="v1"), Arm("new", version="channel:new")), control="old",
               rollout=Rollout(steps=10, min_users_per_step=2)),)),))


def test_each_user_belongs_to_the_arm_the_server_assigns() -> None:
    assigner = Assigner(AB)
    greedy, explore = ArmTraffic(AB, "explore-test", "greedy"), ArmTraffic(AB, "explore-test", "explore")
    for user in USERS:
        arm = assigner.assign(user).arms["explore-test"]
        assert greedy(user) == (arm == "greedy") and explore(user) == (arm == "explore")
    assert 0.45 < sum(map(greedy, USERS)) / len(USERS) < 0.55
    assert greedy.name == "explore-test=greedy"


def test_a_rollout_arm_follows_the_stage_in_the_state_files(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts")
    now = [0.0]
    new = ArmTraffic(ROLLOUT, "roll", "new", store, refresh_s=1.0, clock=lambda: now[0])
    assert not any(map(new, USERS))  # not started: everyone in control
    store.start(ROLLOUT.layers[0].experiments[0], now=0.0)  # stage 1: 10% of users
    now[0] = 0.5
    assert not any(map(new, USERS))  # read again only after refresh_s
    now[0] = 1.5
    share = sum(map(new, USERS)) / len(USERS)
    assert 0.07 < share < 0.13
    assert all(new(u) == (Assigner(ROLLOUT, {"roll": 1}).assign(u).arms["roll"] == "new") for u in USERS)


def test_mistakes_are_named() -> None:
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        ArmTraffic(AB, "nope", "greedy")
    with pytest.raises(ValueError, match="has no arm 'x'"):
        ArmTraffic(AB, "explore-test", "x")
    with pytest.raises(ValueError, match="rollout"):
        ArmTraffic(ROLLOUT, "roll", "new")
    interleaved = ExperimentsConfig((Layer("model", (
        Experiment("il", (Arm("a", version="v1"), Arm("b", version="current")), interleave=True),)),))
    with pytest.raises(ValueError, match="interleaves"):
        ArmTraffic(interleaved, "il", "a")
    assert parse_arm_spec("explore-test=greedy") == ("explore-test", "greedy")
    with pytest.raises(ValueError, match="EXPERIMENT=ARM"):
        parse_arm_spec("greedy")
