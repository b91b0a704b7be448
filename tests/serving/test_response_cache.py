"""The per-user response cache: hits on repeats, and never a stale list after the user's own event (on this replica
or another), a model swap, or a list computed while either happened; exploring and time-dependent arms bypass it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.predictor import Recommendation
from seekrec.serving.response_cache import ResponseCache
from seekrec.serving.settings import ServeSettings


def _rec(user: str, version: str = "v1") -> Recommendation:
    return Recommendation(user, ("a", "b"), (2.0, 1.0), version, False)


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _cache_counts(client: TestClient) -> dict[str, float]:
    text = client.get("/metrics").text
    return {r: _metric(text, f'seekrec_cache_requests_total{{cache="response",result="{r}"}}')
            for r in ("hit", "miss", "bypass")}


def _items(client: TestClient, **body: object) -> tuple[list[str], dict]:
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return [i["item_id"] for i in data["items"]], data


def _wait_for(predicate: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- the cache alone ----------------------------------------------------------------------------------------------
def test_lru_bound_evicts_the_least_recently_used() -> None:
    cache, model = ResponseCache(2, 60.0), object()
    for user in ("u1", "u2"):
        assert cache.put((user, "live", 10, True), model, _rec(user), cache.begin(user))
    assert cache.get(("u1", "live", 10, True), model) is not None  # u1 is now the most recent
    cache.put(("u3", "live", 10, True), model, _rec("u3"), cache.begin("u3"))
    assert len(cache) == 2
    assert cache.get(("u2", "live", 10, True), model) is None
    assert cache.get(("u1", "live", 10, True), model) is not None


def test_entries_expire_and_belong_to_their_model() -> None:
    now = [0.0]
    cache, model = ResponseCache(10, 5.0, clock=lambda: now[0]), object()
    key = ("u1", "live", 10, True)
    cache.put(key, model, _rec("u1"), cache.begin("u1"))
    assert cache.get(key, object()) is None  # another model (a swapped arm): a miss, and the entry goes
    cache.put(key, model, _rec("u1"), cache.begin("u1"))
    now[0] = 4.9
    assert cache.get(key, model) is not None
    now[0] = 5.0
    assert cache.get(key, model) is None and len(cache) == 0


def test_a_list_computed_across_an_invalidation_is_not_stored() -> None:
    cache, model = ResponseCache(10, 60.0), object()
    key = ("u1", "live", 10, True)
    pending = cache.begin("u1")
    cache.events_applied(["u1"])  # the user's click lands while their list is computed from the old history
    assert not cache.put(key, model, _rec("u1"), pending)
    cache.end(pending)
    other = cache.begin("u2")
    cache.events_applied(["u1"])  # someone else's event: u2's list is still good
    assert cache.put(("u2", "live", 10, True), model, _rec("u2"), other)
    swap = cache.begin("u3")
    cache.models_installed({"live": model})  # any install: lists under way may come from the old model
    assert not cache.put(("u3", "live", 10, True), model, _rec("u3"), swap)


def test_serve_stores_nothing_when_the_event_arrives_while_the_model_ranks() -> None:
    cache, model = ResponseCache(10, 60.0), object()
    key = ("u1", "live", 10, True)

    async def scenario() -> list[Recommendation]:
        started = asyncio.Event()

        async def slow() -> Recommendation:
            started.set()
            await asyncio.sleep(0.01)
            return _rec("u1", "old-history")

        first = asyncio.create_task(cache.serve(key, model, slow))
        await started.wait()
        cache.events_applied(["u1"])
        old = await first

        async def fresh() -> Recommendation:
            return _rec("u1", "new-history")

        return [old, await cache.serve(key, model, fresh)]

    old, new = asyncio.run(scenario())
    assert old.model_version == "old-history" and new.model_version == "new-history"


def test_settings_are_checked(settings: ServeSettings) -> None:
    with pytest.raises(ValueError, match="response_cache_size"):
        replace(settings, response_cache_size=-1)
    with pytest.raises(ValueError, match="response_cache_ttl_s"):
        replace(settings, response_cache_ttl_s=0)
    with pytest.raises(ValueError, match="max_entries"):
        ResponseCache(-1, 1.0)


# -- served for real ----------------------------------------------------------------------------------------------
def test_a_repeat_is_a_hit_and_a_click_is_never_served_stale(settings: ServeSettings) -> None:
    with TestClient(create_app(settings)) as client:
        first, _ = _items(client, user_id="3", k=10)
        again, _ = _items(client, user_id="3", k=10)
        assert again == first and _cache_counts(client) == {"hit": 1, "miss": 1, "bypass": 0}
        _items(client, user_id="3", k=5)  # another k is another entry
        assert _cache_counts(client)["miss"] == 2
        assert client.post("/events", json={"events": [{"user_id": "3", "item_id": first[0]}]}).status_code == 200
        after, _ = _items(client, user_id="3", k=10)
        assert first[0] not in after  # the clicked item is filtered as seen at once: no stale list
        text = client.get("/metrics").text
    assert _metric(text, 'seekrec_cache_invalidations_total{cache="response",reason="event"}') == 2  # k=10 and k=5
    assert _metric(text, 'seekrec_cache_entries{cache="response"}') == 1


def test_a_hot_swap_invalidates_the_arm(settings: ServeSettings, registry: ModelRegistry,
                                        variant: Callable[..., str]) -> None:
    with TestClient(create_app(settings)) as client:
        _, body = _items(client, user_id="3", k=10)
        _items(client, user_id="3", k=10)
        assert body["model_version"] == "v000001" and _cache_counts(client)["hit"] == 1
        new = variant(registry, seed=1)
        _wait_for(lambda: client.get("/version").json()["current"] == new)
        _, body = _items(client, user_id="3", k=10)  # the first request after the swap: the new model's list
        assert body["model_version"] == new
        text = client.get("/metrics").text
    assert _metric(text, 'seekrec_cache_invalidations_total{cache="response",reason="model_swap"}') >= 1


def test_another_replicas_event_invalidates_through_the_shared_log(settings: ServeSettings) -> None:
    """Two servers on one SQLite event log: an event acknowledged by the second shows in the first's next list
    that carries the event's offset (read your writes), and in every list once the tail poller read it."""
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        top = _items(first, user_id="7", k=10)[0][0]
        _items(first, user_id="7", k=10)
        assert _cache_counts(first)["hit"] == 1
        offset = second.post("/events", json={"events": [{"user_id": "7", "item_id": top}]}).json()["offsets"][-1]
        assert top not in _items(first, user_id="7", k=10, min_offset=offset)[0]
        _wait_for(lambda: top not in _items(first, user_id="7", k=5)[0])
        assert top not in _items(first, user_id="7", k=10)[0]


def test_exploring_arms_bypass_the_cache(settings: ServeSettings, tmp_path: Path) -> None:
    path = tmp_path / "explore.toml"
    path.write_text("""
[[layers]]
name = "explore"
[[layers.experiments]]
name = "explore"
arms = [{ name = "always", share = 1.0, params = { explore_epsilon = 1.0, explore_top_n = 20 } }]
""")
    with TestClient(create_app(replace(settings, experiments=path))) as client:
        for _ in range(3):
            _items(client, user_id="3", k=5)
        assert _cache_counts(client) == {"hit": 0, "miss": 0, "bypass": 3}


def test_a_model_reading_the_request_time_bypasses_the_cache(settings: ServeSettings,
                                                              context_registry: ModelRegistry) -> None:
    with TestClient(create_app(replace(settings, registry=context_registry.root))) as client:
        for _ in range(2):
            _items(client, user_id="3", k=5)
        assert _cache_counts(client) == {"hit": 0, "miss": 0, "bypass": 2}


def test_size_zero_turns_the_cache_off(settings: ServeSettings) -> None:
    with TestClient(create_app(replace(settings, response_cache_size=0))) as client:
        first = _items(client, user_id="3", k=10)[0]
        assert _items(client, user_id="3", k=10)[0] == first
        assert _cache_counts(client) == {"hit": 0, "miss": 0, "bypass": 0}
