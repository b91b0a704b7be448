"""Layered experiments served for real: a rollout whose treatment hurts clicks is rolled back by the server's own
controller before it reaches 30% of users, every user is then back on control, and an operator can move a
rollout through ``/experiments``. Clicks come from a scripted user who clicks the control arm's lists and never
the treatment's (the broken model), sending each click back with its list's request id."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from seekrec.experiments.outcomes import SHARED
from seekrec.experiments.rollout_store import RolloutStore
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings

EXPERIMENTS = """
[[layers]]
name = "model"

[[layers.experiments]]
name = "rollout"
control = "pinned"
arms = [{ name = "pinned", version = "v000001" }, { name = "online", version = "current" }]
guardrails = [{ metric = "ctr", max_relative_drop = 0.10, min_users = 20 }]

[layers.experiments.rollout]
steps = 10
min_users_per_step = 20
min_seconds_per_step = 0
alpha = 0.05

[[layers]]
name = "explore"

[[layers.experiments]]
name = "epsilon"
arms = [{ name = "greedy", share = 0.5, params = { explore_epsilon = 0.0 } },
        { name = "explore", share = 0.5, params = { explore_epsilon = 0.1 } }]
"""


def _layered(settings: ServeSettings, tmp_path: Path) -> ServeSettings:
    path = tmp_path / "experiments.toml"
    path.write_text(EXPERIMENTS)
    return replace(settings, experiments=path, rollout_interval_s=0.1)


def _round(client: TestClient, users: range, rng: np.random.Generator, broken: str = "online") -> dict[str, int]:
    """Every user asks once; lists of the control arm get two clicks, the broken arm's none."""
    arms = {"pinned": 0, "online": 0}
    events = []
    for u in users:
        body = client.post("/recommend", json={"user_id": f"u{u}", "k": 5}).json()
        arm = body["arms"]["rollout"]
        arms[arm] += 1
        if arm != broken and body["items"]:
            picks = rng.choice(len(body["items"]), size=min(2, len(body["items"])), replace=False)
            events += [{"user_id": f"u{u}", "item_id": body["items"][int(i)]["item_id"],
                        "request_id": body["request_id"]} for i in picks]
    if events:
        assert client.post("/events", json={"events": events}).status_code == 200
    return arms


def test_a_treatment_that_hurts_clicks_is_rolled_back_before_30_percent(
        settings: ServeSettings, registry: ModelRegistry, variant: Callable[..., str], tmp_path: Path) -> None:
    variant(registry, seed=5)  # CURRENT: the new model under rollout
    layered = _layered(settings, tmp_path)
    store = RolloutStore(layered.rollout_path)
    rng = np.random.default_rng(0)
    highest, served = 1, {"pinned": 0, "online": 0}
    with TestClient(create_app(layered)) as client:
        body = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
        assert set(body["arms"]) == {"rollout", "epsilon"} and body["request_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for arm, n in _round(client, range(300), rng).items():
                served[arm] += n
            time.sleep(0.3)  # a look of the controller (every 0.1 s) and the replica's poll (every 0.05 s)
            state = store.read("rollout")
            highest = max(highest, state.stage)
            if state.status != "running":
                break
        assert state.status == "rolled_back" and state.stage == 0, state.history
        assert highest <= 2, f"reached stage {highest} ({highest * 10}% of users) before rolling back"
        assert served["online"] > 0
        time.sleep(0.2)
        after = _round(client, range(300), rng)
        assert after == {"pinned": 300, "online": 0}  # everyone back on control
        status = client.get("/experiments").json()
        assert status["rollouts"]["rollout"]["status"] == "rolled_back" and status["stages"] == {"rollout": 0}


def test_an_operator_moves_a_rollout(settings: ServeSettings, registry: ModelRegistry, tmp_path: Path) -> None:
    layered = replace(_layered(settings, tmp_path), rollout_controller=False)
    RolloutStore(layered.rollout_path)  # the controller is off here: the operator starts and moves it
    with TestClient(create_app(layered)) as client:
        assert client.post("/experiments/rollout/advance", json={}).status_code == 409  # not started
        from seekrec.experiments.definition import ExperimentsConfig

        RolloutStore(layered.rollout_path).start(ExperimentsConfig.load(layered.experiments).experiment("rollout"),
                                                  time.time())
        moved = client.post("/experiments/rollout/advance", json={"reason": "looks fine"}).json()
        assert moved["rollouts"]["rollout"]["stage"] == 2 and moved["stages"] == {"rollout": 2}
        stopped = client.post("/experiments/rollout/stop", json={}).json()
        assert stopped["rollouts"]["rollout"]["status"] == "stopped"
        back = client.post("/experiments/rollout/rollback", json={"reason": "enough"}).json()
        assert back["rollouts"]["rollout"]["status"] == "rolled_back" and back["stages"] == {"rollout": 0}
        assert client.post("/experiments/rollout/explode", json={}).status_code == 404
        assert client.post("/experiments/nothing/advance", json={}).status_code == 404


def test_an_exploring_arm_serves_candidates_from_below_the_greedy_list(settings: ServeSettings, tmp_path: Path) -> None:
    """epsilon = 1: every slot comes from the model's candidates ranked K..top_n, never its own top K; the other arm
    (Thompson) re-ranks within the top candidates and learns from the clicks sent back."""
    path = tmp_path / "explore.toml"
    path.write_text("""
[[layers]]
name = "explore"
[[layers.experiments]]
name = "explore"
arms = [{ name = "thompson", share = 0.5, params = { explore_method = "thompson", explore_top_n = 20 } },
        { name = "always", share = 0.5, params = { explore_epsilon = 1.0, explore_top_n = 20 } }]
""")
    users = [str(u) for u in range(1, 31)]
    with TestClient(create_app(settings)) as client:
        greedy = {u: [i["item_id"] for i in client.post("/recommend", json={"user_id": u, "k": 20}).json()["items"]]
                  for u in users}
    with TestClient(create_app(replace(settings, experiments=path))) as client:
        served = {u: client.post("/recommend", json={"user_id": u, "k": 5}).json() for u in users}
        for user, body in served.items():
            items = [i["item_id"] for i in body["items"]]
            assert len(items) == 5 and len(set(items)) == 5
            if body["arms"]["explore"] == "always":
                assert not set(items) & set(greedy[user][:5]) and set(items) <= set(greedy[user])
            else:  # Thompson keeps to the model's top 20
                assert set(items) <= set(greedy[user])
        clicks = [{"user_id": u, "item_id": b["items"][0]["item_id"], "request_id": b["request_id"]}
                  for u, b in served.items()]
        assert client.post("/events", json={"events": clicks}).status_code == 200
        assert {b["arms"]["explore"] for b in served.values()} == {"thompson", "always"}
        metrics = client.get("/metrics").text
        explored = [line for line in metrics.splitlines() if line.startswith("seekrec_explored_slots_total")]
        assert explored and float(explored[0].split()[-1]) >= 5


def test_an_interleaving_experiment_merges_both_rankers_and_logs_the_teams(
        settings: ServeSettings, registry: ModelRegistry, variant: Callable[..., str], tmp_path: Path) -> None:
    """Users of an interleaving experiment get one list drawn from both versions by team draft; the outcome log
    keeps which ranker gave each position, so clicks vote for one (``evaluation.interleaving``)."""
    from seekrec.evaluation.interleaving import interleaving_credit
    from seekrec.experiments.outcome_stores import open_outcome_log

    other = variant(registry, seed=7)
    path = tmp_path / "interleave.toml"
    path.write_text(f"""
[[layers]]
name = "model"
[[layers.experiments]]
name = "versus"
interleave = true
arms = [{{ name = "old", version = "v000001" }}, {{ name = "new", version = "{other}" }}]
""")
    users = [str(u) for u in range(1, 21)]
    alone = {}
    for version in ("v000001", other):
        plain = replace(settings, experiment=ExperimentSettings("x", (ArmSettings("only", version),)))
        with TestClient(create_app(plain)) as client:
            alone[version] = {u: [i["item_id"] for i in client.post("/recommend", json={"user_id": u, "k": 6})
                                  .json()["items"]] for u in users}
    with TestClient(create_app(replace(settings, experiments=path))) as client:
        bodies = {u: client.post("/recommend", json={"user_id": u, "k": 6}).json() for u in users}
    with open_outcome_log(replace(settings, experiments=path).outcome_log_url) as log:
        served = {s.request_id: s for s in log.read()}
    for user, body in bodies.items():
        assert body["arm"] == "interleaved" and body["arms"] == {"versus": "interleaved"}
        assert body["model_version"] == f"v000001+{other}"
        record = served[body["request_id"]]
        items = [i["item_id"] for i in body["items"]]
        assert len(items) == 6 == len(set(items)) and len(record.teams) == 6
        teams = [t % SHARED for t in record.teams]
        for item, team, coded in zip(items, teams, record.teams):  # each item came from the ranker its team names
            assert item in alone["v000001" if team == 0 else other][user]
            # marked shared exactly when both rankers alone would have shown it
            assert (coded >= SHARED) == (item in alone["v000001"][user] and item in alone[other][user])
        assert abs(sum(teams) - 3) <= 1  # team draft: the two rankers fill the list evenly
    assert interleaving_credit(np.array(teams), [0]) != 0
