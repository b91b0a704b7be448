"""Fault paths of the server: event-log outages, a corrupt CURRENT, a log restarted empty, restarts
that must keep added items, and liveness during a slow start-up."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.process import free_port
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings


def _redis_settings(settings: ServeSettings, redis: Any, **changes: Any) -> ServeSettings:
    return replace(settings, event_log=f"{redis.url}?stream=faults:events&socket_timeout=0.5", **changes)


class _Server:
    """The app under a real uvicorn in a thread: keep-alive behaviour is uvicorn's, not TestClient's."""

    def __init__(self, settings: ServeSettings) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _call(conn: http.client.HTTPConnection, method: str, path: str,
          body: dict[str, Any] | None = None) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response, json.loads(response.read() or b"{}")


@pytest.fixture
def served(settings: ServeSettings, throwaway_redis: Any) -> Iterator[_Server]:
    server = _Server(_redis_settings(settings, throwaway_redis, background_start=True))
    conn = server.connection()
    deadline = time.monotonic() + 60
    while _call(conn, "GET", "/readyz")[0].status != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    conn.close()
    yield server
    server.stop()


@pytest.mark.parametrize("outage", ["down", "paused"])
def test_event_log_outage_is_a_503_with_retry_after_on_a_kept_connection(
        served: _Server, throwaway_redis: Any, outage: str, caplog: pytest.LogCaptureFixture) -> None:
    conn = served.connection()
    batch = {"events": [{"user_id": "1", "item_id": "1"}]}
    assert _call(conn, "POST", "/events", batch)[0].status == 200
    socket_before = conn.sock
    (throwaway_redis.stop if outage == "down" else throwaway_redis.pause)()
    try:
        with caplog.at_level(logging.ERROR, logger="seekrec.serving.state"):
            for _ in range(4):
                response, body = _call(conn, "POST", "/events", batch)
                assert response.status == 503 and response.getheader("Retry-After") == "2", body
                assert "event log unavailable" in body["detail"] and not response.will_close
            response, _ = _call(conn, "GET", "/healthz")  # the same connection still serves
            assert response.status == 200 and conn.sock is socket_before
    finally:
        if outage == "paused":
            throwaway_redis.resume()
    outage_lines = [r for r in caplog.records if "event log unavailable" in r.getMessage()]
    assert len(outage_lines) == 1  # one line for the outage, not one per request
    if outage == "paused":  # and it recovers by itself
        assert _call(conn, "POST", "/events", batch)[0].status == 200
    conn.close()


def test_a_retried_batch_with_its_idempotency_key_is_logged_once(client_settings: ServeSettings) -> None:
    with TestClient(create_app(client_settings)) as client:
        batch = {"events": [{"user_id": "7", "item_id": "3"}, {"user_id": "7", "item_id": "4"}],
                 "idempotency_key": "client-batch-1"}
        first = client.post("/events", json=batch)
        retry = client.post("/events", json=batch)
        assert first.status_code == retry.status_code == 200 and first.json() == retry.json()
        assert client.app.state.serving.event_log.end_offset() == 2
        reused = client.post("/events", json={**batch, "events": batch["events"][:1]})
        assert reused.status_code == 409 and "idempotency_key" in reused.text


@pytest.fixture
def client_settings(settings: ServeSettings) -> ServeSettings:
    return settings


def test_a_corrupt_current_serves_the_newest_good_version_and_reports_the_bad_one(
        settings: ServeSettings, registry: ModelRegistry, variant: Callable[..., str]) -> None:
    good = variant(registry, seed=1)
    bad = variant(registry, seed=2)
    weights = registry.root / "versions" / bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    assert registry.current() == bad
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["versions"] == {"live": good} and bad in ready.json()["detail"]
        assert client.post("/recommend", json={"user_id": "1"}).json()["model_version"] == good
        assert 'seekrec_errors_total{kind="model_load"}' in client.get("/metrics").text
        fixed = variant(registry, seed=3, base=good)  # the next good publish is swapped in as usual
        deadline = time.monotonic() + 30
        while client.get("/readyz").json()["versions"] != {"live": fixed}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/readyz").json()["detail"] is None


def test_an_unreadable_current_pointer_serves_the_newest_version(settings: ServeSettings,
                                                                  registry: ModelRegistry) -> None:
    (registry.root / "CURRENT").write_text("garbage\n")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "CURRENT is unreadable" in ready.json()["detail"]


def test_a_redis_restarted_empty_is_detected_and_new_events_reach_histories(
        settings: ServeSettings, throwaway_redis: Any) -> None:
    with TestClient(create_app(_redis_settings(settings, throwaway_redis))) as client:
        state = client.app.state.serving
        told = []  # predictors that keep state per offset (a pipeline's feature store) must be told too
        for predictor in state.table.predictors():
            predictor.follow_restarted_log = lambda p=predictor: told.append(p.version)
        items = state.table.catalog.items.decode([1, 2, 3])
        for item in items:
            assert client.post("/events", json={"events": [{"user_id": "new-user", "item_id": item}]}).status_code == 200
        assert state.histories.offset == 3
        throwaway_redis.restart()  # no persistence: the stream is gone, offsets start again at 1
        item = state.table.catalog.items.decode([4])[0]
        response = client.post("/events", json={"events": [{"user_id": "other-user", "item_id": item}]})
        assert response.status_code == 200 and response.json()["offsets"] == [1, 1]
        assert state.tail.resets == 1 and state.histories.offset == 1
        assert told == [p.version for p in state.table.predictors()]
        assert state.tail.get("other-user") == [4]  # before: skipped as "already applied"
        assert len(state.tail.get("new-user")) == 3  # what was learned before the reset stays


def test_health_answers_during_a_slow_start_and_ready_follows(settings: ServeSettings, throwaway_redis: Any) -> None:
    throwaway_redis.pause()  # the event log cannot be opened yet: start-up waits in the background
    slow = _redis_settings(settings, throwaway_redis, background_start=True)
    with TestClient(create_app(slow)) as client:
        try:
            assert client.get("/healthz").status_code == 200
            not_ready = client.get("/readyz")
            assert not_ready.status_code == 503 and "event log" in not_ready.json()["detail"]
            assert client.post("/recommend", json={"user_id": "1"}).status_code == 503
        finally:
            throwaway_redis.resume()
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        assert client.post("/recommend", json={"user_id": "1"}).status_code == 200


def test_a_failed_background_start_turns_liveness_red(settings: ServeSettings, registry: ModelRegistry) -> None:
    current = registry.current()
    (registry.root / "versions" / current / "model.safetensors").write_bytes(b"broken")
    pinned = replace(settings, background_start=True,
                     experiment=ExperimentSettings("e", (ArmSettings("old", current),)))
    with TestClient(create_app(pinned)) as client:
        deadline = time.monotonic() + 30
        while client.get("/healthz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "sha256 does not match" in client.get("/healthz").json()["detail"]


def test_replay_progress_is_logged(settings: ServeSettings, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    from seekrec.online.event_log import Event
    from seekrec.online.factory import open_event_log
    from seekrec.serving import history_tail

    with open_event_log(settings.event_log) as event_log:
        event_log.append([Event(str(u % 50), str(1 + u % 40), float(u)) for u in range(3000)])
    monkeypatch.setattr(history_tail, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="seekrec.serving.history_tail"):
        with TestClient(create_app(settings)):
            pass
    assert any("replaying the event log: offset" in r.getMessage() for r in caplog.records)


def test_added_items_survive_a_restart(settings: ServeSettings, registry: ModelRegistry,
                                       pipeline_bundle: Path) -> None:
    version = registry.publish_bundle(pipeline_bundle, kind="pipeline", name="two-tower+din")
    new = {"items": [{"item_id": f"fresh-{k}", "title": f"A Fresh Release {k}", "genres": ["Drama"]}
                     for k in range(3)]}
    with TestClient(create_app(settings)) as client:
        assert client.post("/items", json=new).json() == {"added": {version: ["fresh-0", "fresh-1", "fresh-2"]}}
    assert settings.items_journal_path.is_file()
    with settings.items_journal_path.open("a") as journal:
        journal.write('{"items": {"cut-sho')  # a write cut short by kill -9: never acknowledged
    with TestClient(create_app(settings)) as client:  # a restart: the version alone does not know them
        predictor = client.app.state.serving.arms["live"].predictor
        assert all(f"fresh-{k}" in predictor.catalog.items for k in range(3))
        assert client.post("/items", json=new).json() == {"added": {version: []}}  # known already
        assert client.post("/items", json={"items": [{"item_id": "later", "title": "Later"}]}).status_code == 200
    with TestClient(create_app(settings)) as client:
        assert "later" in client.app.state.serving.arms["live"].predictor.catalog.items
