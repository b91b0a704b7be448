"""Hot swap under traffic: no request fails or waits on a swap, and responses move to the new version;
a corrupt version is refused and counted while the old one keeps serving."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.io import atomic_write_bytes
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings


def _wait_for(predicate: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_publish_during_traffic_swaps_without_failures(settings: ServeSettings, registry: ModelRegistry,
                                                       variant: Callable[..., str]) -> None:
    seen: list[list[tuple[int, str]]] = [[] for _ in range(3)]
    stop = threading.Event()

    def traffic(client: TestClient, worker: int) -> None:
        n = 0
        while not stop.is_set():
            response = client.post("/recommend", json={"user_id": str(1 + (worker * 7 + n) % 130), "k": 5})
            seen[worker].append((response.status_code, response.json().get("model_version", response.text)))
            n += 1

    with TestClient(create_app(settings)) as client:
        workers = [threading.Thread(target=traffic, args=(client, w)) for w in range(3)]
        for w in workers:
            w.start()
        _wait_for(lambda: all(len(s) >= 5 for s in seen))
        new = variant(registry, seed=1)  # published and promoted while requests are in flight
        _wait_for(lambda: all(s[-1][1] == new for s in seen))
        stop.set()
        for w in workers:
            w.join()
        metrics = client.get("/metrics").text
        assert client.get("/version").json()["current"] == new
    for responses in seen:
        assert {status for status, _ in responses} == {200}
        versions = [v for _, v in responses]
        assert versions[0] == "v000001" and versions[-1] == new
        assert versions == sorted(versions)  # never back to the old version once switched
    assert "seekrec_model_swaps_total 1.0" in metrics
    assert f'seekrec_model_version_info{{arm="live",version="{new}"}} 1.0' in metrics


def test_corrupt_version_is_refused_and_counted(settings: ServeSettings, registry: ModelRegistry,
                                                variant: Callable[..., str]) -> None:
    with TestClient(create_app(settings)) as client:
        bad = variant(registry, seed=2, promote=False)
        weights = registry.root / "versions" / bad / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        atomic_write_bytes(registry.root / "CURRENT", f"{bad}\n".encode())  # as a hand edit would
        _wait_for(lambda: 'seekrec_errors_total{kind="model_load"} 1.0' in client.get("/metrics").text)
        body = client.post("/recommend", json={"user_id": "1"}).json()
        assert body["model_version"] == "v000001"
        assert client.get("/readyz").status_code == 200
        good = variant(registry, seed=3, base="v000001")  # the next good version is picked up as usual
        _wait_for(lambda: client.post("/recommend", json={"user_id": "1"}).json()["model_version"] == good)
        assert 'seekrec_errors_total{kind="model_load"} 1.0' in client.get("/metrics").text  # not retried


def test_clicks_on_new_items_count_once_a_version_knows_them(settings: ServeSettings, registry: ModelRegistry) -> None:
    with TestClient(create_app(settings)) as client:
        client.post("/events", json={"events": [{"user_id": "1", "item_id": "brand-new"}]})  # no model knows it yet
        assert "brand-new" not in _ids(client, "2")
        loaded = registry.load()
        catalog = Catalog.from_bytes((loaded.directory / CATALOG_FILE).read_bytes())
        catalog.add("brand-new")  # what the online trainer does when it sees a new item
        loaded.model.grow_items(len(catalog.items))
        grown = registry.publish(loaded.model, model_name="sasrec",
                                 model_config={**loaded.manifest["model_config"], "n_items": len(catalog.items)},
                                 extra={"published_at": time.time()}, extra_files={CATALOG_FILE: catalog.to_bytes()})
        _wait_for(lambda: client.get("/version").json()["current"] == grown)
        assert "brand-new" in _ids(client, "2")  # now recommendable
        assert "brand-new" not in _ids(client, "1")  # and the earlier click is in user 1's history
        published = client.get("/version").json()["arms"][0]["published_at"]
        assert published.endswith("+00:00")  # the trainer's unix time, shown as ISO 8601


def _ids(client: TestClient, user: str) -> list[str]:
    body = client.post("/recommend", json={"user_id": user, "k": 1000}).json()
    return [item["item_id"] for item in body["items"]]


def test_channel_arms_follow_their_own_learner(settings: ServeSettings, registry: ModelRegistry,
                                               variant: Callable[..., str]) -> None:
    """Per-arm learners: an arm serving ``channel:NAME`` follows CURRENT until its learner first publishes to the
    channel, then only the channel; the other arm never sees that version."""
    arms = (ArmSettings("greedy", "channel:greedy", 0.5), ArmSettings("explore", "channel:explore", 0.5))
    settings = dataclasses.replace(settings, experiment=ExperimentSettings("explore-test", arms))
    with TestClient(create_app(settings)) as client:
        users = {}
        for user in map(str, range(1, 131)):
            users.setdefault(client.post("/recommend", json={"user_id": user}).json()["arm"], user)
        assert set(users) == {"greedy", "explore"}

        def serving() -> dict[str, str]:
            return {arm: client.post("/recommend", json={"user_id": u}).json()["model_version"]
                    for arm, u in users.items()}

        assert serving() == {"greedy": "v000001", "explore": "v000001"}  # no channel yet: CURRENT
        explore = variant(registry, seed=1, channel="explore")
        _wait_for(lambda: serving()["explore"] == explore)
        assert serving()["greedy"] == "v000001" and registry.current() == "v000001"
        current = variant(registry, seed=2, base="v000001")  # a new CURRENT moves the arm still without a channel
        _wait_for(lambda: serving()["greedy"] == current)
        assert serving()["explore"] == explore
        greedy = variant(registry, seed=3, base="v000001", channel="greedy")
        _wait_for(lambda: serving() == {"greedy": greedy, "explore": explore})
        info = client.get("/metrics").text
    assert f'seekrec_model_version_info{{arm="explore",version="{explore}"}} 1.0' in info
