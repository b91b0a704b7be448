"""Limits and the API contract through the real app (lifespan included): each test is a reproduction
from issue 10 that the server failed before."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from seekrec.serving.app import create_app
from seekrec.serving.batching import QueueFullError
from seekrec.serving.settings import ServeSettings


@pytest.fixture
def client(settings: ServeSettings) -> TestClient:
    with TestClient(create_app(settings)) as c:
        yield c


def test_huge_context_is_413_long_strings_and_nan_are_422(client: TestClient) -> None:
    huge = client.post("/recommend", json={"user_id": "1", "context": {"blob": "x" * 5_000_000}})
    assert huge.status_code == 413 and "max_body_bytes = 1048576" in huge.json()["detail"]
    long = client.post("/recommend", json={"user_id": "1", "context": {"blob": "x" * 5000}})
    assert long.status_code == 422 and long.json()["detail"][0]["loc"][:3] == ["body", "context", "blob"]
    for bad in ("NaN", "Infinity", "-Infinity"):
        raw = '{"user_id": "1", "context": {"score": %s}}' % bad
        response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 422, (bad, response.text)
    assert 'seekrec_requests_rejected_total{reason="body_too_large"} 1.0' in client.get("/metrics").text


def test_whole_float_k_is_an_integer_and_non_utf8_is_400(client: TestClient) -> None:
    body = client.post("/recommend", content='{"user_id": "3", "k": 7.0}',
                       headers={"content-type": "application/json"})
    assert body.status_code == 200 and len(body.json()["items"]) == 7
    assert client.post("/recommend", json={"user_id": "3", "k": 7.5}).status_code == 422
    assert client.post("/recommend", json={"user_id": "3", "k": "7"}).status_code == 422  # still strict
    raw = b'{"user_id": "\xff\xfe"}'
    assert client.post("/recommend", content=raw, headers={"content-type": "application/json"}).status_code == 400


def test_openapi_documents_the_error_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    responses = schema["paths"]["/events"]["post"]["responses"]
    assert set(responses) >= {"200", "400", "413", "422", "429", "503"}
    ref = responses["422"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][ref]["properties"]["detail"]["type"] == "array"
    # a 422 of the route's own checks has the documented shape too
    bad = client.post("/events", content='{"events": [{"user_id": "1", "item_id": "\\ud800"}]}',
                      headers={"content-type": "application/json"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], list)


def test_rate_limit_is_429_with_retry_after(settings: ServeSettings) -> None:
    with TestClient(create_app(replace(settings, rate_limit_per_s=1.0, rate_limit_burst=3))) as client:
        statuses = [client.post("/recommend", json={"user_id": "3"}).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        refused = client.post("/recommend", json={"user_id": "3"})
        assert int(refused.headers["Retry-After"]) >= 1 and "rate_limit_per_s" in refused.json()["detail"]
        assert client.get("/readyz").status_code == 200  # probes are never limited
        assert 'seekrec_requests_rejected_total{reason="rate_limited"} 3.0' in client.get("/metrics").text


def test_full_queue_is_503_at_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    async def full(item: object) -> object:
        raise QueueFullError("512 requests already wait for a micro-batch (max_queue = 512)")

    monkeypatch.setattr(client.app.state.serving.batcher, "submit", full)
    response = client.post("/recommend", json={"user_id": "3"})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "max_queue = 512" in response.json()["detail"]


def test_reject_policy_keeps_the_item_table_closed(settings: ServeSettings) -> None:
    with TestClient(create_app(replace(settings, unknown_items="reject"))) as client:
        state = client.app.state.serving
        n_items = len(state.table.catalog.items)
        known = state.table.catalog.items.decode([1])[0]
        events = [{"user_id": "u", "item_id": str(known)}, {"user_id": "u", "item_id": "invented-1"}]
        refused = client.post("/events", json={"events": events})
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "events", 1, "item_id"]
        assert "unknown_items = 'reject'" in refused.json()["detail"][0]["msg"]
        assert client.post("/events", json={"events": events[:1]}).status_code == 200
        assert len(state.table.catalog.items) == n_items and state.event_log.end_offset() == 1


def test_accept_policy_is_the_default(client: TestClient) -> None:
    ok = client.post("/events", json={"events": [{"user_id": "u", "item_id": "brand-new"}]})
    assert ok.status_code == 200


def test_user_cap_bounds_memory_and_is_a_metric(settings: ServeSettings) -> None:
    with TestClient(create_app(replace(settings, max_users=5, data_dir=None))) as client:
        events = [{"user_id": f"invented-{i}", "item_id": "1"} for i in range(50)]
        assert client.post("/events", json={"events": events}).status_code == 200
        assert len(client.app.state.serving.histories) == 5
        text = client.get("/metrics").text
        assert "seekrec_user_histories 5.0" in text and "seekrec_user_histories_evicted 45.0" in text


def test_settings_name_the_limit() -> None:
    with pytest.raises(ValueError, match="max_body_bytes must be an integer"):
        ServeSettings(registry="r", event_log="e.db", max_body_bytes=0)
    with pytest.raises(ValueError, match="unknown_items must be one of"):
        ServeSettings(registry="r", event_log="e.db", unknown_items="sometimes")
    with pytest.raises(ValueError, match="rate_limit_per_s"):
        ServeSettings(registry="r", event_log="e.db", rate_limit_per_s=math.inf)
    assert json.dumps(ServeSettings(registry="r", event_log="e.db").rate_limit_per_s) == "0.0"  # off by default
