"""A/B arms through the API: each user is served by the arm its hash picks, pinned arms stay on their
version while the live arm follows CURRENT."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.experiments import ArmAssigner
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings


def test_arms_follow_assignment_and_their_versions(settings: ServeSettings, registry: ModelRegistry,
                                                   variant: Callable[..., str]) -> None:
    live_v = variant(registry, seed=11)
    experiment = ExperimentSettings("ranker-test", (ArmSettings("control", "v000001", 1.0), ArmSettings("live", "current", 1.0)))
    settings = replace(settings, experiment=experiment)
    expected_version = {"control": "v000001", "live": live_v}
    users = [str(u) for u in range(1, 41)] + [f"guest-{u}" for u in range(20)]
    with TestClient(create_app(settings)) as client:
        bodies = {u: client.post("/recommend", json={"user_id": u, "k": 5}).json() for u in users}
        for user, body in bodies.items():
            arm = ArmAssigner(experiment).assign(user).name
            assert body["arm"] == arm and body["model_version"] == expected_version[arm]
        assert {b["arm"] for b in bodies.values()} == {"control", "live"}
        # asking again lands in the same arm with the same answer (under a new request id)
        again = client.post("/recommend", json={"user_id": "1", "k": 5}).json()
        assert again.pop("request_id") != bodies["1"].pop("request_id") and again == bodies["1"]
        arms = {a["name"]: a for a in client.get("/version").json()["arms"]}
        assert arms["control"]["version"] == "v000001" and arms["live"]["version"] == live_v
        newer = variant(registry, seed=12)
        deadline = time.monotonic() + 10
        while client.get("/version").json()["current"] != newer:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        arms = {a["name"]: a for a in client.get("/version").json()["arms"]}
        assert arms["control"]["version"] == "v000001" and arms["live"]["version"] == newer
        text = client.get("/metrics").text
        assert 'seekrec_model_version_info{arm="control",version="v000001"} 1.0' in text
        assert f'seekrec_model_version_info{{arm="live",version="{newer}"}} 1.0' in text


def test_concurrent_requests_across_arms_equal_sequential_ones(settings: ServeSettings, registry: ModelRegistry,
                                                              variant: Callable[..., str]) -> None:
    variant(registry, seed=21)
    experiment = ExperimentSettings("mix", (ArmSettings("control", "v000001"), ArmSettings("live", "current")))
    users = [str(u) for u in range(1, 49)]
    with TestClient(create_app(replace(settings, experiment=experiment, max_wait_ms=20.0))) as client:
        sequential = {u: client.post("/recommend", json={"user_id": u, "k": 8}).json() for u in users}
        with ThreadPoolExecutor(max_workers=12) as pool:
            concurrent = dict(zip(users, pool.map(lambda u: client.post("/recommend", json={"user_id": u, "k": 8}).json(),
                                                  users)))
        text = client.get("/metrics").text
    for user in users:
        a, b = sequential[user], concurrent[user]
        assert (a["arm"], a["model_version"], _ids(a)) == (b["arm"], b["model_version"], _ids(b))
        assert [i["score"] for i in a["items"]] == pytest.approx([i["score"] for i in b["items"]], rel=1e-5, abs=1e-6)
    batches = float(re.search(r"seekrec_batch_size_count ([\d.]+)", text).group(1))
    assert batches < 2 * len(users)  # some requests shared a forward pass


def _ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]
