"""The web console's JSON endpoints and shipped files (``seekrec.serving.ui``), without a browser: what each
page reads, who may read it, and that the admin actions are refused on a server without an admin key.
The browser drives the same endpoints in test_console_browser.py."""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.auth import ENV_VAR, hash_key
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings
from seekrec.serving.ui import routes
from seekrec.serving.ui.live import quantile

ADMIN, READ = "admin-key-" + "a" * 32, "read-key-" + "r" * 32
PAGES = ("try.html", "live.html", "experiments.html", "models.html")


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def client(settings: ServeSettings) -> TestClient:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keyed(settings: ServeSettings, tmp_path: Path) -> TestClient:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"admin {hash_key(ADMIN)}\nread {hash_key(READ)}\n")
    with TestClient(create_app(replace(settings, api_keys_file=keys))) as c:
        yield c


def test_pages_and_their_scripts_ship_as_package_data() -> None:
    """Every page, and every script and stylesheet a page or script names, is found through importlib.resources
    (what a non-editable install carries: pyproject's package-data)."""
    static = importlib.resources.files("seekrec.serving.ui") / "static"
    for page in PAGES:
        text = (static / page).read_text(encoding="utf-8")
        for name in re.findall(r'(?:src|href)="([\w-]+\.(?:js|css))"', text):
            assert (static / name).is_file(), f"{page} loads {name}, which is not shipped"
    for script in (p for p in static.iterdir() if p.name.endswith(".js")):
        for name in re.findall(r'from "\./([\w-]+\.js)"', script.read_text(encoding="utf-8")):
            assert (static / name).is_file(), f"{script.name} imports {name}, which is not shipped"


def test_pages_are_served_without_a_key(keyed: TestClient) -> None:
    assert keyed.get("/ui", follow_redirects=False).headers["location"] == "/ui/try.html"
    for page in PAGES:
        answer = keyed.get(f"/ui/{page}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert keyed.get("/ui/console.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    session = keyed.get("/ui/api/session").json()
    assert session["keys_required"] and session["admin_enabled"]


def test_try_view_has_titles_reasons_and_freshness(client: TestClient, sim_data_dir: Path) -> None:
    user = client.get("/ui/api/users?limit=5").json()["users"][0]["user_id"]
    view = client.get(f"/ui/api/try/{user}?k=5").json()
    assert len(view["items"]) == 5 and not view["fallback"] and view["arm"] == "live"
    assert all(not i["title"].startswith("item ") for i in view["items"])  # the simulator's titles
    assert all(i["because"] for i in view["items"]) and view["weighs_most"]  # a sequence model can tell
    assert view["history"] and view["trained_through"] is None  # an offline-trained version
    # the list is a real served one: a click naming its request_id is credited to it
    answer = client.post("/events", json={"events": [{"user_id": user, "item_id": view["items"][0]["item_id"],
                                                      "request_id": view["request_id"]}]})
    assert answer.status_code == 200
    after = client.get(f"/ui/api/try/{user}?k=5").json()
    assert after["history"][0]["item_id"] == view["items"][0]["item_id"]
    assert view["items"][0]["item_id"] not in [i["item_id"] for i in after["items"]]


def test_new_user_gets_popular_items_without_reasons(client: TestClient) -> None:
    view = client.get("/ui/api/try/anon-1234").json()
    assert view["fallback"] and view["weighs_most"] == [] and view["history"] == []
    assert all(i["because"] is None for i in view["items"])


def test_reading_needs_a_read_key_when_keys_are_configured(keyed: TestClient) -> None:
    assert keyed.get("/ui/api/users").status_code == 401
    assert keyed.get("/ui/api/users", headers={"Authorization": f"Bearer {READ}"}).status_code == 200


def test_quantile_interpolates_within_the_bucket_of_the_rank() -> None:
    older = [(0.01, 0.0), (0.1, 0.0), (float("inf"), 0.0)]
    newer = [(0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, newer, older) == pytest.approx(0.01)
    assert quantile(0.75, newer, older) == pytest.approx(0.055)
    assert quantile(0.5, older, older) is None  # nothing observed in the window
    assert quantile(0.99, [(0.01, 0.0), (float("inf"), 10.0)], []) == 0.01  # in +Inf: the last finite bound


def test_live_figures_cover_recent_requests(client: TestClient) -> None:
    first = client.get("/ui/api/live").json()
    assert first["served"] == {"live": "v000001"} and first["qps"] is None  # one reading: no window yet
    for n in range(20):
        client.post("/recommend", json={"user_id": str(n + 1)})
    live = client.get("/ui/api/live").json()
    assert live["qps"] > 0 and 0 < live["latency_p50_ms"] <= live["latency_p99_ms"]
    assert [p["version"] for p in live["published"]] == ["v000001"] and live["model_age_s"]["live"] >= 0


def test_models_view_and_admin_actions_need_a_configured_admin_key(
        client: TestClient, keyed: TestClient, registry: ModelRegistry, variant) -> None:
    view = client.get("/ui/api/models").json()
    row = view["versions"][0]
    assert row["current"] and row["served_by"] == ["live"] and "test/ndcg@10" in row["metrics"]
    assert view["curves_of"] == "v000001" and view["curves"]["train loss"]
    new = variant(registry, seed=1)
    # an open (keyless) server refuses the console's admin actions outright
    refused = client.post(f"/ui/api/models/{'v000001'}/promote")
    assert refused.status_code == 403 and "no 'admin' key" in refused.json()["detail"]
    assert keyed.post("/ui/api/models/rollback").status_code == 401
    assert keyed.post("/ui/api/models/rollback", headers={"Authorization": f"Bearer {READ}"}).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert keyed.post("/ui/api/models/rollback", headers=admin).json()["current"] == "v000001"
    assert keyed.post(f"/ui/api/models/{new}/promote", headers=admin).json()["current"] == new
    assert keyed.post("/ui/api/models/v000099/promote", headers=admin).status_code == 409


def test_the_console_reads_training_curves_from_the_file_training_writes() -> None:
    from seekrec.serving.ui.models import RUN_METRICS_FILE
    from seekrec.training.run_dir import METRICS_FILE

    assert RUN_METRICS_FILE == METRICS_FILE


ROLLOUT = """
[[layers]]
name = "model"

[[layers.experiments]]
name = "rollout"
control = "pinned"
arms = [{ name = "pinned", version = "v000001" }, { name = "online", version = "current" }]

[layers.experiments.rollout]
steps = 4
min_users_per_step = 1000
min_seconds_per_step = 3600
"""


@pytest.fixture(autouse=True)
def _no_experiments_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "EXPERIMENTS_CACHE_S", 0.0)  # every reading of /ui/api/experiments reads the logs


def _traffic(client: TestClient, users: int, headers: dict[str, str] | None = None) -> None:
    """Each user gets a list and clicks its first item (with the list's request id) every other time; then the
    server's outcome writer is flushed so the lists are in the log."""
    for u in range(users):
        body = client.post("/recommend", json={"user_id": str(u + 1), "k": 5}, headers=headers).json()
        if u % 2 == 0:
            event = {"user_id": str(u + 1), "item_id": body["items"][0]["item_id"], "request_id": body["request_id"]}
            assert client.post("/events", json={"events": [event]}, headers=headers).status_code == 200
    assert client.app.state.serving.outcomes.flush(timeout=10)


def test_experiments_view_of_an_ab_test(settings: ServeSettings) -> None:
    """Arms with their shares, per-arm users, lists and CTR from the logs, a timeline with bands, the treatment's
    always-valid p-value and the sample-ratio check against the configured 50/50."""
    ab = ExperimentSettings("ab", (ArmSettings("a", "current"), ArmSettings("b", "current")))
    with TestClient(create_app(replace(settings, experiment=ab))) as client:
        empty = client.get("/ui/api/experiments").json()
        assert empty["lists"] == 0 and empty["experiments"][0]["arms"][0]["ctr"] is None
        _traffic(client, 60)
        view = client.get("/ui/api/experiments").json()
    assert view["lists"] == 60 and view["events"] == 30 and view["note"] is None
    assert view["alpha"] == pytest.approx(0.05)
    (exp,) = view["experiments"]
    assert exp["name"] == "ab" and exp["kind"] == "ab" and exp["control"] == "a" and exp["rollout"] is None
    arms = {a["name"]: a for a in exp["arms"]}
    assert [a["share"] for a in arms.values()] == [0.5, 0.5]
    assert arms["a"]["users"] + arms["b"]["users"] == 60 and arms["a"]["clicks"] + arms["b"]["clicks"] == 30
    assert 0 < arms["a"]["ctr"] < 1 and arms["a"]["ctr_low"] <= arms["a"]["ctr"] <= arms["a"]["ctr_high"]
    assert arms["b"]["diff"] == pytest.approx(arms["b"]["ctr"] - arms["a"]["ctr"])
    assert 0 <= arms["b"]["p_value_sequential"] <= 1 and arms["a"]["p_value"] is None
    series = {s["arm"]: s for s in exp["timeline"]}
    assert series["a"]["p_value"] is None and len(series["b"]["p_value"]) == len(series["b"]["times"]) >= 1
    assert all(lo <= c <= hi for lo, c, hi in zip(series["a"]["ctr_low"], series["a"]["ctr"], series["a"]["ctr_high"])
               if lo is not None)
    srm = exp["srm"]
    assert srm["arms"] == ["a", "b"] and sum(srm["users"]) == 60 and srm["expected"] == [0.5, 0.5]
    assert 0 < srm["p_value"] <= 1 and not srm["mismatch"]


def test_experiments_view_of_a_rollout_and_its_admin_actions(settings: ServeSettings, registry: ModelRegistry,
                                                             variant, tmp_path: Path) -> None:
    """A rollout shows its stage, history and the sample-ratio check against its stage's split; advancing it
    needs an admin key (401 without a key, 403 with a read key) and shows in the view at once."""
    variant(registry, seed=1)  # CURRENT: the treatment
    path = tmp_path / "experiments.toml"
    path.write_text(ROLLOUT)
    keys = tmp_path / "keys.txt"
    keys.write_text(f"admin {hash_key(ADMIN)}\nread {hash_key(READ)}\n")
    read, admin = {"Authorization": f"Bearer {READ}"}, {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(create_app(replace(settings, experiments=path, api_keys_file=keys))) as client:
        assert client.get("/ui/api/experiments").status_code == 401
        _traffic(client, 80, admin)  # (an admin key may also ingest)
        view = client.get("/ui/api/experiments", headers=read).json()
        (exp,) = view["experiments"]
        assert exp["kind"] == "rollout" and exp["control"] == "pinned"
        assert exp["rollout"]["stage"] == 1 and exp["rollout"]["steps"] == 4 and exp["rollout"]["status"] == "running"
        assert [a["share"] for a in exp["arms"]] == [0.75, 0.25]
        assert exp["rollout"]["history"][0]["reasons"] == ["rollout started"]
        assert exp["srm"]["expected"] == [0.75, 0.25] and sum(exp["srm"]["users"]) == 80
        assert "stage 1" in exp["srm"]["scope"] and {s["arm"] for s in exp["timeline"]} == {"pinned", "online"}
        assert client.post("/experiments/rollout/advance", json={}).status_code == 401
        assert client.post("/experiments/rollout/advance", json={}, headers=read).status_code == 403
        done = client.post("/experiments/rollout/advance", json={"reason": "console test"}, headers=admin)
        assert done.status_code == 200
        after = client.get("/ui/api/experiments", headers=read).json()["experiments"][0]
    assert after["rollout"]["stage"] == 2 and [a["share"] for a in after["arms"]] == [0.5, 0.5]
    last = after["rollout"]["history"][-1]
    assert last["source"] == "operator" and last["reasons"] == ["operator advance: console test"]
