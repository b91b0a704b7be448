"""The HTTP API through ``TestClient`` (as a context manager, so the lifespan loads everything)."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekrec.data.schema import InteractionData
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings


@pytest.fixture
def client(settings: ServeSettings) -> TestClient:
    with TestClient(create_app(settings)) as c:
        yield c


def _seen(data_dir: Path, user: str) -> set[str]:
    data = InteractionData.read(data_dir)
    users, items, _ = data.interactions()
    uid = int(data.user_ids.encode([int(user)])[0])
    return {str(r) for r in data.item_ids.raw[items[users == uid] - 1].tolist()}


def _recommend(client: TestClient, **body: object) -> dict:
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _items(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_recommend_known_user(client: TestClient) -> None:
    body = _recommend(client, user_id="3", k=7)
    assert body["user_id"] == "3" and body["model_version"] == "v000001" and body["arm"] == "live"
    assert not body["fallback"] and len(body["items"]) == 7
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert len(_items(_recommend(client, user_id="3"))) == 10  # the server's default_k


def test_unknown_user_falls_back_to_popular(client: TestClient) -> None:
    body = _recommend(client, user_id="never-seen", k=5)
    assert body["fallback"] and len(body["items"]) == 5
    counts = [item["score"] for item in body["items"]]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0


def test_exclude_seen_really_excludes(client: TestClient, sim_data_dir: Path) -> None:
    seen = _seen(sim_data_dir, "5")
    kept = _items(_recommend(client, user_id="5", k=1000))
    assert kept and not seen & set(kept) and len(kept) == 80 - len(seen)
    everything = _items(_recommend(client, user_id="5", k=1000, exclude_seen=False))
    assert set(everything) >= seen and len(everything) == 80


def test_event_changes_next_recommendation_at_once(client: TestClient) -> None:
    top = _items(_recommend(client, user_id="7", k=3))[0]
    response = client.post("/events", json={"events": [{"user_id": "7", "item_id": top, "timestamp": 1.7e9}]})
    assert response.status_code == 200 and response.json() == {"accepted": 1, "offsets": [1, 1]}
    assert top not in _items(_recommend(client, user_id="7", k=3))
    # a brand-new user becomes personalised as soon as one click is acknowledged
    assert _recommend(client, user_id="newcomer")["fallback"]
    client.post("/events", json={"events": [{"user_id": "newcomer", "item_id": top}, {"user_id": "newcomer", "item_id": "2"}]})
    body = _recommend(client, user_id="newcomer", k=50)
    assert not body["fallback"] and not {top, "2"} & set(_items(body))


def test_metrics_expose_counters(client: TestClient) -> None:
    _recommend(client, user_id="1")
    _recommend(client, user_id="unknown")
    client.post("/events", json={"events": [{"user_id": "1", "item_id": "4"}, {"user_id": "1", "item_id": "5"}]})
    client.post("/recommend", json={"user_id": "1", "k": 0})
    text = client.get("/metrics").text
    assert 'seekrec_http_requests_total{method="POST",route="/recommend",status="200"} 2.0' in text
    assert 'seekrec_http_requests_total{method="POST",route="/recommend",status="422"} 1.0' in text
    assert 'seekrec_http_requests_total{method="POST",route="/events",status="200"} 1.0' in text
    assert re.search(r'seekrec_http_request_duration_seconds_count\{route="/recommend"\} 3\.0', text)
    assert 'seekrec_model_version_info{arm="live",version="v000001"} 1.0' in text
    assert 'seekrec_event_log_lag{consumer="online-trainer"} 2.0' in text  # no trainer committed anything
    assert 'seekrec_recommendations_total{arm="live",fallback="true",version="v000001"} 1.0' in text
    assert re.search(r'seekrec_model_freshness_seconds\{arm="live",version="v000001"\} \d', text)
    assert "seekrec_events_accepted_total 2.0" in text and "seekrec_ready 1.0" in text


def test_version_route(client: TestClient) -> None:
    body = client.get("/version").json()
    assert body["current"] == "v000001" and body["ready"] and body["experiment"] == "default"
    assert body["arms"][0] | {"created": None} == {
        "name": "live", "configured": "current", "weight": 1.0, "version": "v000001", "model_name": "sasrec",
        "created": None, "published_at": None, "n_items": 80, "index": "flat", "encoder": "fp32"}


def test_int8_options_round_trip(settings: ServeSettings) -> None:
    """An int8 encoder over an sq8 index serves full lists and says so in /version and /metrics."""
    with TestClient(create_app(replace(settings, quantize="int8", index_codec="sq8"))) as client:
        body = _recommend(client, user_id="3", k=7)
        assert not body["fallback"] and len(body["items"]) == 7
        arm = client.get("/version").json()["arms"][0]
        assert (arm["encoder"], arm["index"]) == ("int8", "flat-sq8")
        assert ('seekrec_model_inference_info{arm="live",encoder="int8",index="flat-sq8",version="v000001"} 1.0'
                in client.get("/metrics").text)


def test_not_ready_until_a_model_is_published(tmp_path: Path, settings: ServeSettings, trained_run: Path) -> None:
    empty = replace(settings, registry=tmp_path / "empty-registry")
    with TestClient(create_app(empty)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 503
        assert client.post("/recommend", json={"user_id": "1"}).status_code == 503
        # events are durable data: accepted before any model exists, replayed into histories later
        assert client.post("/events", json={"events": [{"user_id": "fresh", "item_id": "9"}]}).status_code == 200
        ModelRegistry(empty.registry).publish_run(trained_run)
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        body = _recommend(client, user_id="fresh", k=100)
        assert not body["fallback"] and "9" not in _items(body)


def _post_raw(client: TestClient, path: str, raw: str) -> int:
    return client.post(path, content=raw.encode(), headers={"content-type": "application/json"}).status_code


BAD_REQUESTS = [
    ("/recommend", "{not json"),
    ("/recommend", "[]"),
    ("/recommend", "{}"),
    ("/recommend", '{"user_id": 5}'),
    ("/recommend", '{"user_id": ""}'),
    ("/recommend", '{"user_id": "1", "k": 0}'),
    ("/recommend", '{"user_id": "1", "k": 1001}'),
    ("/recommend", '{"user_id": "1", "k": 1e12}'),
    ("/recommend", '{"user_id": "1", "k": "ten"}'),
    ("/recommend", '{"user_id": "1", "k": true}'),
    ("/recommend", '{"user_id": "1", "k": NaN}'),
    ("/recommend", '{"user_id": "1", "exclude_seen": "yes"}'),
    ("/recommend", '{"user_id": "1", "surprise": 1}'),
    ("/recommend", '{"user_id": "1", "context": [1]}'),
    ("/events", '{"events": []}'),
    ("/events", '{"events": {}}'),
    ("/events", '{"events": [{"user_id": "1"}]}'),
    ("/events", '{"events": [{"user_id": "1", "item_id": "2", "timestamp": NaN}]}'),
    ("/events", '{"events": [{"user_id": "1", "item_id": "2", "timestamp": Infinity}]}'),
    ("/events", '{"events": [{"user_id": "1", "item_id": "2", "timestamp": -5}]}'),
    ("/events", '{"events": [{"user_id": "1", "item_id": "2", "value": "high"}]}'),
    ("/events", '{"events": [{"user_id": "1", "item_id": "\\ud800"}]}'),
    ("/events", '{"events": [' + ",".join(['{"user_id": "1", "item_id": "2"}'] * 1001) + "]}"),
]


def test_bad_input_is_a_4xx_never_a_500(client: TestClient) -> None:
    statuses = {raw[:60]: _post_raw(client, path, raw) for path, raw in BAD_REQUESTS}
    assert set(statuses.values()) == {422}, statuses
    body = client.post("/recommend", json={"user_id": "1", "k": 0}).json()
    assert body["detail"][0]["loc"] == ["body", "k"] and "greater than or equal to 1" in body["detail"][0]["msg"]
    assert client.get("/events").status_code == 405 and client.get("/nope").status_code == 404
    assert client.get("/version").status_code == 200  # the server is fine after all that
    assert "seekrec_errors_total{" not in client.get("/metrics").text


def test_factory_does_no_work(tmp_path: Path) -> None:
    settings = ServeSettings(registry=tmp_path / "missing", event_log=str(tmp_path / "no" / "events.db"))
    app = create_app(settings)  # nothing is opened until the lifespan runs
    assert not (tmp_path / "no").exists() and app.state.serving is None


def test_bad_pinned_version_fails_startup(settings: ServeSettings) -> None:
    pinned = replace(settings, experiment=ExperimentSettings("e", (ArmSettings("old", "v000009"),)))
    with pytest.raises(Exception, match="unknown version v000009"):
        with TestClient(create_app(pinned)):
            pass


def test_serves_a_model_with_event_time_inputs(settings: ServeSettings, context_registry: ModelRegistry) -> None:
    """The server's histories keep event times, so such a model serves dataset users and live clicks alike."""
    with TestClient(create_app(replace(settings, registry=context_registry.root))) as client:
        body = _recommend(client, user_id="3", k=5)
        assert not body["fallback"] and len(body["items"]) == 5
        top = _items(body)[0]
        response = client.post("/events", json={"events": [{"user_id": "3", "item_id": top, "timestamp": 2e9,
                                                             "value": 4.0}]})
        assert response.status_code == 200
        after = _recommend(client, user_id="3", k=5)
        assert not after["fallback"] and top not in _items(after)
        client.post("/events", json={"events": [{"user_id": "newcomer", "item_id": top, "timestamp": 2e9}]})
        assert not _recommend(client, user_id="newcomer")["fallback"]
