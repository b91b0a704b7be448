"""A retrieval -> ranking pipeline bundle served from the registry: A/B beside a sequence model,
live events through its feature store, cold-start items through ``POST /items``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekrec.data.schema import InteractionData
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings


@pytest.fixture
def ab_client(tmp_path: Path, registry: ModelRegistry, pipeline_bundle: Path, sim_data_dir: Path) -> TestClient:
    """Arm "sequence" serves the SASRec version v000001, arm "pipeline" the bundle (CURRENT)."""
    version = registry.publish_bundle(pipeline_bundle, kind="pipeline", name="two-tower+din")
    assert version == "v000002"
    settings = ServeSettings(registry=registry.root, event_log=str(tmp_path / "events.db"), data_dir=sim_data_dir,
                             poll_interval_s=0.05, max_wait_ms=1.0, background_start=False,
                             experiment=ExperimentSettings("seq-vs-pipeline", (ArmSettings("sequence", "v000001", 0.5),
                                                                               ArmSettings("pipeline", "current", 0.5))))
    with TestClient(create_app(settings)) as client:
        yield client


def _user_in_arm(client: TestClient, arm: str) -> str:
    for user in range(1, 121):
        body = client.post("/recommend", json={"user_id": str(user), "k": 5}).json()
        if body["arm"] == arm:
            return str(user)
    raise AssertionError(f"no user in arm {arm}")


def _seen(data_dir: Path, user: str) -> set[str]:
    data = InteractionData.read(data_dir)
    users, items, _ = data.interactions()
    uid = int(data.user_ids.encode([int(user)])[0])
    return {str(r) for r in data.item_ids.raw[items[users == uid] - 1].tolist()}


def test_pipeline_arm_serves_beside_a_sequence_model(ab_client: TestClient, sim_data_dir: Path) -> None:
    versions = ab_client.get("/readyz").json()["versions"]
    assert versions == {"sequence": "v000001", "pipeline": "v000002"}
    user = _user_in_arm(ab_client, "pipeline")
    body = ab_client.post("/recommend", json={"user_id": user, "k": 8}).json()
    assert body["model_version"] == "v000002" and not body["fallback"] and len(body["items"]) == 8
    ids = [item["item_id"] for item in body["items"]]
    assert len(set(ids)) == 8 and not set(ids) & _seen(sim_data_dir, user)  # de-duplicated, seen filtered
    scores = [item["score"] for item in body["items"]]
    assert all(0.0 <= s <= 1.0 for s in scores)  # calibrated click probabilities
    arms = {a["name"]: a for a in ab_client.get("/version").json()["arms"]}
    assert arms["pipeline"]["index"].startswith("pipeline")


def test_events_reach_the_pipeline_feature_store(ab_client: TestClient) -> None:
    user = _user_in_arm(ab_client, "pipeline")
    top = ab_client.post("/recommend", json={"user_id": user, "k": 3}).json()["items"][0]["item_id"]
    response = ab_client.post("/events", json={"events": [{"user_id": user, "item_id": top}]})
    assert response.status_code == 200
    assert top not in [i["item_id"] for i in ab_client.post("/recommend", json={"user_id": user, "k": 3}).json()["items"]]
    state = ab_client.app.state.serving
    pipeline = state.arms["pipeline"].predictor
    assert pipeline.store.offset() == response.json()["offsets"][1]  # the store saw the event


def test_new_item_with_only_a_title_is_served_at_once(ab_client: TestClient) -> None:
    response = ab_client.post("/items", json={"items": [{"item_id": "brand-new", "title": "A Fresh Release",
                                                         "genres": ["Drama"]}]})
    assert response.status_code == 200 and response.json() == {"added": {"v000002": ["brand-new"]}}
    everything = set()
    for user in range(1, 121):
        body = ab_client.post("/recommend", json={"user_id": str(user), "k": 80}).json()
        if body["arm"] == "pipeline":
            everything |= {i["item_id"] for i in body["items"]}
    assert "brand-new" in everything  # retrievable before any interaction
    again = ab_client.post("/items", json={"items": [{"item_id": "brand-new", "title": "A Fresh Release"}]})
    assert again.json() == {"added": {"v000002": []}}
    bad = ab_client.post("/items", json={"items": [{"item_id": "x", "title": ""}]})
    assert bad.status_code == 422


def test_items_need_a_pipeline_arm(client_without_pipeline: TestClient) -> None:
    response = client_without_pipeline.post("/items", json={"items": [{"item_id": "n", "title": "t"}]})
    assert response.status_code == 409 and "pipeline" in response.json()["detail"]


@pytest.fixture
def client_without_pipeline(settings: ServeSettings) -> TestClient:
    with TestClient(create_app(settings)) as client:
        yield client


def test_cli_publishes_a_pipeline_run(tmp_path: Path, pipeline_bundle: Path) -> None:
    from seekrec.cli import main

    root = tmp_path / "reg"
    assert main(["registry", "--root", str(root), "publish", str(pipeline_bundle.parent)]) == 0
    manifest = ModelRegistry(root).manifest("v000001")
    assert manifest["kind"] == "pipeline" and manifest["model_name"].startswith("pipeline(")
    assert len(manifest["data_spec"]["feature_spec_version"]) == 64
    assert any(key.startswith("two_tower/valid/") for key in manifest["metrics"])


def test_a_bundle_saved_with_added_items_serves_them(tmp_path: Path, registry: ModelRegistry, pipeline_bundle: Path,
                                                     sim_data_dir: Path) -> None:
    from seekrec.pipeline.artifacts import load_bundle, save_bundle
    from seekrec.pipeline.features import new_item_features
    from seekrec.serving.pipeline_predictor import PipelinePredictor

    pipeline = load_bundle(pipeline_bundle)
    record = {"title": "A brand new title", "genres": ["Drama"]}
    pipeline.add_items(["grown-1"], new_item_features(pipeline.spec, [record], 0.0))
    version = registry.publish_bundle(save_bundle(pipeline, tmp_path / "grown"), kind="pipeline", name="grown")
    predictor = PipelinePredictor.from_registry(registry, version, data_dir=sim_data_dir)
    assert predictor.n_items == pipeline.n_items and "grown-1" in predictor.catalog.items


def test_pipeline_stages_are_timed_and_its_calibrated_probabilities_are_kept_for_the_bias_gauges(
        ab_client: TestClient) -> None:
    _user_in_arm(ab_client, "sequence")
    user = _user_in_arm(ab_client, "pipeline")
    body = ab_client.post("/recommend", json={"user_id": user, "k": 5}).json()
    text = ab_client.get("/metrics").text
    for stage in ("search", "rank", "rerank"):
        assert f'seekrec_stage_duration_seconds_count{{stage="{stage}"}}' in text, stage
    records = {r.arm: r for r in ab_client.app.state.serving.monitor.window.snapshot()}
    assert records["sequence"].probabilities is None  # SASRec's scores are no click probabilities
    probabilities = records["pipeline"].probabilities
    assert probabilities == tuple(item["score"] for item in body["items"]) and all(0 <= p <= 1 for p in probabilities)


def test_hot_items_in_front_of_a_shared_store_give_the_same_lists(tmp_path: Path, registry: ModelRegistry,
                                                                  pipeline_bundle: Path, sim_data_dir: Path,
                                                                  redis_url: str, redis_prefix: str) -> None:
    """A pipeline arm over a shared Redis feature store keeps its popular items' attributes in memory: the lists are
    those of a server reading every attribute from Redis, and the arm bypasses the response cache (its rows hold
    live window counts)."""
    registry.publish_bundle(pipeline_bundle, kind="pipeline", name="two-tower+din")
    settings = ServeSettings(registry=registry.root, event_log=str(tmp_path / "events.db"), data_dir=sim_data_dir,
                             poll_interval_s=0.05, max_wait_ms=1.0, background_start=False,
                             feature_store=f"{redis_url}?prefix={redis_prefix}:features")
    users = [str(u) for u in range(1, 21)]
    lists = {}
    for hot in (0, 1000):
        with TestClient(create_app(replace(settings, hot_items=hot))) as client:
            lists[hot] = [client.post("/recommend", json={"user_id": u, "k": 8}).json()["items"] for u in users]
            metrics = client.get("/metrics").text
        hits = [line for line in metrics.splitlines()
                if line.startswith('seekrec_cache_requests_total{cache="hot_items",result="hit"}')]
        assert bool(hits) == bool(hot) and (not hits or float(hits[0].split()[-1]) > 0)
        assert f'seekrec_cache_requests_total{{cache="response",result="bypass"}} {len(users)}.0' in metrics
    # the same items in the same order; scores equal up to float summation order (micro-batches differ by timing)
    assert [[i["item_id"] for i in items] for items in lists[1000]] == [[i["item_id"] for i in items] for items in lists[0]]
    for hot, cold in zip(lists[1000], lists[0]):
        assert [i["score"] for i in hot] == pytest.approx([i["score"] for i in cold], rel=1e-5)
