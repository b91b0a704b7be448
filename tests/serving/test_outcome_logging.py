"""Every served list reaches the outcome log off the request path, and an event sent back with its request id is
credited to that list and its arm (``experiments.attribution``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient

from seekrec.experiments.attribution import EventRecord, attribute
from seekrec.experiments.outcome_stores import open_outcome_log, outcome_log_beside
from seekrec.online.factory import open_event_log
from seekrec.serving.app import create_app
from seekrec.serving.settings import ServeSettings


def test_served_lists_are_logged_and_events_carry_their_request_id_back(settings: ServeSettings) -> None:
    with TestClient(create_app(settings)) as client:
        bodies = [client.post("/recommend", json={"user_id": user, "k": 4}).json() for user in ("3", "5", "guest")]
        clicked = bodies[0]["items"][2]["item_id"]
        response = client.post("/events", json={"events": [
            {"user_id": "3", "item_id": clicked, "request_id": bodies[0]["request_id"]}]})
        assert response.status_code == 200, response.text
        bad = client.post("/events", json={"events": [{"user_id": "3", "item_id": clicked, "request_id": "é" * 3}]})
        assert bad.status_code == 422 and "request_id" in bad.text
    # the lifespan's end flushed the queue
    assert settings.outcome_log_url == outcome_log_beside(settings.event_log)
    with open_outcome_log(settings.outcome_log_url) as log:
        served = list(log.read())
    assert [s.request_id for s in served] == [b["request_id"] for b in bodies]
    first = served[0]
    assert first.user_id == "3" and first.arms == {settings.experiment.name: "live"} and first.version == "v000001"
    assert list(first.items) == [item["item_id"] for item in bodies[0]["items"]] and first.latency_ms > 0
    assert served[2].fallback
    with open_event_log(settings.event_log) as events:
        logged = events.read(0)
    assert logged[-1].request_id == bodies[0]["request_id"]
    outcomes = attribute(served, [EventRecord.from_event(e) for e in logged], window_s=600)
    credited = {o.served.request_id: o for o in outcomes}
    assert credited[bodies[0]["request_id"]].clicks == 1 and credited[bodies[0]["request_id"]].clicked_positions == (2,)
    assert credited[bodies[1]["request_id"]].clicks == 0


def test_the_outcome_log_can_be_turned_off_or_placed(settings: ServeSettings, tmp_path: Path) -> None:
    assert replace(settings, outcome_log="off").outcome_log_url is None
    placed = replace(settings, outcome_log=str(tmp_path / "served.db"))
    with TestClient(create_app(placed)) as client:
        client.post("/recommend", json={"user_id": "3", "k": 2})
    with open_outcome_log(tmp_path / "served.db") as log:
        assert len(list(log.read())) == 1
    assert outcome_log_beside("sqlite:///abs/dir/events.db") == "sqlite:///abs/dir/events-served.db"
    assert outcome_log_beside("redis://localhost:6379/0?stream=ev&socket_timeout=2") == \
        "redis://localhost:6379/0?stream=ev%3Aserved&socket_timeout=2"
    assert outcome_log_beside("redis://localhost:6379/0") == "redis://localhost:6379/0"
