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
from seekrec.serving.settings import ServeSettings
from seekrec.serving.ui.live import quantile

ADMIN, READ = "admin-key-" + "a" * 32, "read-key-" + "r" * 32
PAGES = ("try.html", "live.html", "models.html")


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
