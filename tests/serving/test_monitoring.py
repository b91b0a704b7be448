"""The server's operator metrics: stage latencies, process metrics, attributed outcomes per arm, freshness after a
swap, served-list quality, calibration and drift (docs/operations.md)."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from seekrec.data.vocab import CATALOG_FILE, Catalog, Vocab
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.drift import BASELINE_REQUESTS, MIN_REQUESTS, DriftMonitor, drift_psi
from seekrec.serving.freshness import PendingEvents
from seekrec.serving.quality import CALIBRATION_MIN_SLOTS, ServedWindow, summarise
from seekrec.serving.settings import ServeSettings


@pytest.fixture
def client(settings: ServeSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition (None: absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}{re.escape('{' + wanted + '}') if labels else ''} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def _wait_for(predicate: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- through the app ---------------------------------------------------------------------------------------
def test_recommend_observes_every_stage_and_process_metrics_are_exported(client: TestClient) -> None:
    client.post("/recommend", json={"user_id": "3", "k": 5})
    text = client.get("/metrics").text
    for stage in ("history", "encode", "search", "rank"):
        assert _sample(text, "seekrec_stage_duration_seconds_count", stage=stage) == 1.0, stage
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "seekrec_process_cpus"):
        assert (_sample(text, name) or 0) > 0, name


def test_clicks_with_a_request_id_count_for_the_arm_that_served_the_list(client: TestClient) -> None:
    body = client.post("/recommend", json={"user_id": "3", "k": 5}).json()
    shown, rid = [i["item_id"] for i in body["items"]], body["request_id"]
    not_shown = next(str(i) for i in range(1, 81) if str(i) not in shown)
    events = [{"user_id": "3", "item_id": shown[0], "request_id": rid},
              {"user_id": "3", "item_id": shown[1], "event_type": "purchase", "request_id": rid},
              {"user_id": "3", "item_id": not_shown, "request_id": rid},  # not in that list
              {"user_id": "3", "item_id": shown[2], "request_id": "never-served"},
              {"user_id": "3", "item_id": shown[2]}]  # no request id: not attributable here
    assert client.post("/events", json={"events": events}).status_code == 200
    text = client.get("/metrics").text
    assert _sample(text, "seekrec_served_items_total", arm="live") == 5.0
    assert _sample(text, "seekrec_attributed_events_total", arm="live", event_type="click") == 1.0
    assert _sample(text, "seekrec_attributed_events_total", arm="live", event_type="purchase") == 1.0
    assert 0 < (_sample(text, "seekrec_served_coverage", arm="live") or 0) <= 5 / 80
    assert 0 <= (_sample(text, "seekrec_served_popularity", arm="live") or -1) <= 1
    assert _sample(text, "seekrec_served_new_item_share", arm="live") == 0.0  # the base catalog's items
    assert _sample(text, "seekrec_prediction_mape", arm="live") is None  # SASRec's scores are no probabilities


def test_freshness_is_observed_when_a_version_trained_on_the_events_swaps_in(client: TestClient,
                                                                             registry: ModelRegistry) -> None:
    offsets = client.post("/events", json={"events": [{"user_id": "1", "item_id": "4"},
                                                      {"user_id": "2", "item_id": "5"}]}).json()["offsets"]
    text = client.get("/metrics").text
    assert _sample(text, "seekrec_event_freshness_pending") == 2.0
    assert _sample(text, "seekrec_event_freshness_seconds_count") == 0.0
    loaded = registry.load()
    fresher = registry.publish(loaded.model, model_name="sasrec", model_config=loaded.manifest["model_config"],
                               extra={"offset": offsets[0], "published_at": time.time()},  # covers the first only
                               extra_files={CATALOG_FILE: (loaded.directory / CATALOG_FILE).read_bytes()})
    _wait_for(lambda: client.get("/version").json()["current"] == fresher)
    text = client.get("/metrics").text
    assert _sample(text, "seekrec_event_freshness_seconds_count") == 1.0
    assert _sample(text, "seekrec_event_freshness_pending") == 1.0
    assert 0 < (_sample(text, "seekrec_event_freshness_seconds_sum") or 0) < 15


def test_a_failed_recommend_counts_against_the_users_arm(settings: ServeSettings) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        state = client.app.state.serving

        async def broken(*args: object) -> None:
            raise RuntimeError("model fell over")

        state.batcher.submit = broken
        assert client.post("/recommend", json={"user_id": "3"}).status_code == 500
        assert _sample(client.get("/metrics").text, "seekrec_recommend_errors_total", arm="live") == 1.0


# -- the bounded windows, directly ---------------------------------------------------------------------------
def _catalog(counts: list[int]) -> Catalog:
    return Catalog(Vocab([str(i) for i in range(1, len(counts) + 1)]), np.array([0, *counts]))


def test_calibration_compares_predicted_and_observed_click_rates_of_settled_lists() -> None:
    now = [1000.0]
    window = ServedWindow(size=1000, clock=lambda: now[0])
    catalog = _catalog([10, 10, 10, 10])
    for n in range(CALIBRATION_MIN_SLOTS):  # predicted 0.2 everywhere, the first item clicked in 1 list of 10
        window.served(f"r{n}", "din", ("1", "2"), (0.2, 0.2))
        if n % 10 == 0:
            assert window.attribute(f"r{n}", "1", "click") == "din"
    now[0] = 2000.0
    window.served("young", "din", ("1", "2"), (0.2, 0.2))  # served after the settling time: not counted
    summary = summarise(window.snapshot(), "din", catalog, settled_before=1500.0)
    assert summary.predicted_ctr == pytest.approx(0.2) and summary.observed_ctr == pytest.approx(0.05)
    assert summary.mape == pytest.approx(3.0)  # |0.2 - 0.05| / 0.05
    assert summary.coverage == pytest.approx(0.5) and summary.new_share == 0.0
    assert math.isnan(summarise(window.snapshot(), "other-arm", catalog, 1e9).coverage)


def test_the_window_forgets_the_oldest_lists() -> None:
    window = ServedWindow(size=2)
    for rid in ("a", "b", "c"):
        window.served(rid, "live", ("1",), None)
    assert len(window) == 2 and window.attribute("a", "1", "click") is None and window.attribute("c", "1", "click")


def test_new_items_are_those_the_version_barely_trained_on() -> None:
    window = ServedWindow()
    window.served("r", "live", ("1", "2", "unknown", "4"), None)
    summary = summarise(window.snapshot(), "live", _catalog([100, 1, 50, 3]), 0.0)
    assert summary.new_share == pytest.approx(0.75)  # item 2 (1 event), item 4 (3 events) and one unknown to it


def test_drift_psi_is_small_for_the_same_traffic_and_large_for_shifted_traffic() -> None:
    rng = np.random.default_rng(0)
    catalog = _catalog(list(rng.integers(1, 1000, size=50)))
    popular = np.argsort(-catalog.counts[1:])[:5] + 1

    def traffic(monitor: DriftMonitor, n: int, shifted: bool) -> None:
        for _ in range(n):
            length = int(rng.integers(20, 40)) if shifted else int(rng.integers(1, 10))
            items = rng.choice(popular, size=length) if shifted else rng.choice(
                np.arange(1, 51), size=length, p=catalog.counts[1:] / catalog.counts[1:].sum())
            monitor.observe("live", "v1", tuple(int(i) for i in items), float(rng.normal(5 if shifted else 0, 1)))

    same, shifted = DriftMonitor(), DriftMonitor()
    traffic(same, BASELINE_REQUESTS, False)
    assert drift_psi(*same.windows()["live"], catalog) == {}  # no recent requests yet
    traffic(same, 2 * MIN_REQUESTS * 5, False)
    traffic(shifted, BASELINE_REQUESTS, False)
    traffic(shifted, 2 * MIN_REQUESTS * 5, True)
    calm, moved = drift_psi(*same.windows()["live"], catalog), drift_psi(*shifted.windows()["live"], catalog)
    assert set(calm) == set(moved) == {"input_popularity", "history_length", "top_score"}
    assert all(v < 0.1 for v in calm.values()), calm
    assert all(v > 0.2 for v in moved.values()), moved
    shifted.observe("live", "v2", (1,), 0.0)  # a new version: a new baseline
    assert drift_psi(*shifted.windows()["live"], catalog) == {}
    shifted.forget([])
    assert shifted.windows() == {}


def test_pending_events_wait_for_a_version_covering_their_offset() -> None:
    now = [10.0]
    pending = PendingEvents(max_pending=3, clock=lambda: now[0])
    pending.acknowledged([2, 1])  # acknowledged out of log order by concurrent batches
    now[0] = 11.0
    pending.acknowledged([3])
    now[0] = 15.0
    assert sorted(pending.covered(2)) == [5.0, 5.0] and len(pending) == 1
    pending.acknowledged([4, 5, 6])  # one over the bound: the oldest goes
    assert len(pending) == 3 and pending.covered(3) == []
