"""API keys and roles (issue 10, item 1) and what clients may learn from errors (item 5).

Each reproduction from the issue runs against a server with keys configured: the request is refused
(401 without a valid key, 403 with a key lacking the role) and the event log, the user's history and
the catalog see nothing."""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from seekrec.cli import main
from seekrec.serving.app import create_app
from seekrec.serving.auth import ENV_VAR, KeyStore, Role, check_bind, hash_key, is_loopback, parse_keys_file
from seekrec.serving.exposure import redact_paths
from seekrec.serving.settings import ServeSettings
from seekrec.serving.state import NotReadyError

KEYS = {"read": "read-key-" + "r" * 32, "ingest": "ingest-key-" + "i" * 32, "admin": "admin-key-" + "a" * 32,
        "metrics": "metrics-key-" + "m" * 32}
ITEM = {"item_id": "new-1", "title": "A new film", "genres": ["Drama"]}


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def _write_keys(path: Path, keys: dict[str, str]) -> Path:
    path.write_text("# role sha256\n" + "".join(f"{role} {hash_key(key)}  # {role} client\n"
                                                 for role, key in keys.items()))
    return path


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture
def keyed_settings(settings: ServeSettings, tmp_path: Path) -> ServeSettings:
    return replace(settings, api_keys_file=_write_keys(tmp_path / "keys.txt", KEYS))


@pytest.fixture
def keyed(keyed_settings: ServeSettings) -> TestClient:
    with TestClient(create_app(keyed_settings)) as c:
        yield c


def _end(client: TestClient) -> int:
    return client.app.state.serving.event_log.end_offset()


def _items(client: TestClient, user: str, exclude_seen: bool = True) -> list[str]:
    response = client.post("/recommend", json={"user_id": user, "k": 1000, "exclude_seen": exclude_seen},
                           headers=_auth("read"))
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_events_from_invented_users_are_refused_and_never_logged(keyed: TestClient) -> None:
    before = _end(keyed)
    events = {"events": [{"user_id": f"bot-{i}", "item_id": "1"} for i in range(50)]}
    assert keyed.post("/events", json=events).status_code == 401
    assert keyed.post("/events", json=events, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert keyed.post("/events", json=events, headers=_auth("read")).status_code == 403
    assert keyed.post("/events", json=events, headers=_auth("metrics")).status_code == 403
    assert _end(keyed) == before  # the online trainer reads the log: nothing reached it
    body = keyed.post("/recommend", json={"user_id": "bot-0"}, headers=_auth("read")).json()
    assert body["fallback"]  # no history was built for the invented user


def test_a_named_users_recommendations_cannot_be_rewritten_without_ingest(keyed: TestClient) -> None:
    before, recs = _end(keyed), _items(keyed, "3")
    target = recs[0]
    fake = {"events": [{"user_id": "3", "item_id": target}]}
    response = keyed.post("/events", json=fake, headers={"X-API-Key": KEYS["read"]})
    assert response.status_code == 403 and "'ingest' role" in response.json()["detail"]
    assert _end(keyed) == before and _items(keyed, "3") == recs
    for role in ("ingest", "admin"):  # the roles that may post events do change them
        assert keyed.post("/events", json=fake, headers=_auth(role)).status_code == 200
    assert target not in _items(keyed, "3") and _end(keyed) == before + 2


def test_history_cannot_be_read_without_the_read_role(keyed: TestClient) -> None:
    body = {"user_id": "5", "k": 1000, "exclude_seen": False}
    response = keyed.post("/recommend", json=body)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert keyed.post("/recommend", json=body, headers=_auth("ingest")).status_code == 403
    assert keyed.post("/recommend", json=body, headers={"X-API-Key": KEYS["admin"]}).status_code == 200
    assert len(_items(keyed, "5", exclude_seen=False)) > len(_items(keyed, "5"))  # read still works


def test_items_need_the_admin_role(keyed: TestClient) -> None:
    body = {"items": [ITEM]}
    assert keyed.post("/items", json=body).status_code == 401
    # the key is checked before the body's fields: a stranger learns nothing of the schema from a 422
    assert keyed.post("/items", json={"items": [{"item_id": 1}] * 20_000}).status_code == 401
    for role in ("read", "ingest", "metrics"):
        assert keyed.post("/items", json=body, headers=_auth(role)).status_code == 403, role
    # admin passes the gate; a sequence model then refuses items by content (409), as without keys
    assert keyed.post("/items", json=body, headers=_auth("admin")).status_code == 409
    assert keyed.get("/version").status_code == 401
    assert keyed.get("/version", headers=_auth("read")).status_code == 403
    assert keyed.get("/version", headers=_auth("admin")).json()["current"] == "v000001"


def test_probes_stay_open_and_metrics_key_is_optional(keyed: TestClient, keyed_settings: ServeSettings) -> None:
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200
    assert keyed.get("/metrics").status_code == 200  # open unless metrics_require_key
    with TestClient(create_app(replace(keyed_settings, metrics_require_key=True))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_auth("read")).status_code == 403
        assert "seekrec_http_requests_total" in client.get("/metrics", headers=_auth("metrics")).text
        assert client.get("/metrics", headers=_auth("admin")).status_code == 200


def test_keys_rotate_without_a_restart(keyed_settings: ServeSettings, caplog: pytest.LogCaptureFixture) -> None:
    path = keyed_settings.api_keys_file
    new_read = "rotated-read-key-" + "n" * 32
    body = {"user_id": "3"}
    with TestClient(create_app(keyed_settings)) as client:
        _write_keys(path, {**KEYS, "read": new_read})  # the operator replaces the read key
        assert client.post("/recommend", json=body, headers=_auth("read")).status_code == 401
        assert client.post("/recommend", json=body, headers={"X-API-Key": new_read}).status_code == 200
        with caplog.at_level(logging.ERROR, "seekrec.serving.auth"):
            path.write_text(f"read {new_read}\n")  # a bad edit (a plaintext key) keeps the last good keys
            assert client.post("/recommend", json=body, headers={"X-API-Key": new_read}).status_code == 200
        assert "keeping the previous keys" in caplog.text and new_read not in caplog.text
        path.write_text("")  # every key revoked
        assert client.post("/recommend", json=body, headers={"X-API-Key": new_read}).status_code == 401


def test_keys_from_the_environment(settings: ServeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, f"ingest:{hash_key(KEYS['ingest'])}, read:{hash_key(KEYS['read'])}")
    with TestClient(create_app(settings)) as client:
        event = {"events": [{"user_id": "1", "item_id": "2"}]}
        assert client.post("/events", json=event).status_code == 401
        assert client.post("/events", json=event, headers=_auth("ingest")).status_code == 200
        assert client.post("/recommend", json={"user_id": "1"}, headers=_auth("read")).status_code == 200


def test_roles_and_bad_key_files() -> None:
    store = KeyStore(env_value=f"admin:{hash_key('a')},read:{hash_key('r')},ingest:{hash_key('r')}")
    assert store.roles("a") == frozenset(Role) and store.roles("r") == {Role.READ, Role.INGEST}
    assert store.roles("x") is None and store.enabled and not KeyStore().enabled
    assert "sk-live-secret" not in store.summary() and hash_key("a") not in store.summary()
    with pytest.raises(ValueError, match="line 2: expected the key's SHA-256") as error:
        parse_keys_file(f"read {hash_key('a')}\nread sk-live-secret\n", "keys.txt")
    assert "sk-live-secret" not in str(error.value)  # a pasted plaintext key is never echoed
    with pytest.raises(ValueError, match="unknown role 'writer'; roles are read, ingest, metrics, admin"):
        parse_keys_file(f"writer {hash_key('a')}", "keys.txt")
    with pytest.raises(ValueError, match="ROLE:SHA256HEX"):
        KeyStore(env_value="read" + hash_key("a"))
    with pytest.raises(ValueError, match="cannot read the API keys file .*missing.txt"):
        KeyStore(Path("missing.txt"))


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("::", False),
                                           ("10.0.0.7", False), ("example.com", False)])
def test_loopback_only_without_keys(host: str, loopback: bool, caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        with caplog.at_level(logging.WARNING, "seekrec.serving.auth"):
            check_bind(host, KeyStore())
        assert "no API keys configured: serving on loopback" in caplog.text
    else:
        with pytest.raises(ValueError, match="refusing to listen on .* without API keys"):
            check_bind(host, KeyStore())
    check_bind(host, KeyStore(env_value=f"read:{hash_key('r')}"))  # with keys any address is allowed


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["serve", "--registry", str(tmp_path), "--event-log", str(tmp_path / "e.db"), "--host", "0.0.0.0"])
    assert code == 2 and "refusing to listen on '0.0.0.0' without API keys" in capsys.readouterr().err


def test_keys_cli_makes_a_key_the_server_accepts(capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["keys", "new", "ingest"]) == 0
    out = capsys.readouterr().out.splitlines()
    key, line = out[0].removeprefix("key:  "), out[1].removeprefix("line: ")
    assert line == f"ingest {hash_key(key)}" and len(key) >= 40
    assert KeyStore(env_value=line.replace(" ", ":")).roles(key) == {Role.INGEST}
    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert main(["keys", "hash", "ingest"]) == 0 and capsys.readouterr().out.strip() == line
    assert main(["keys", "new", "root"]) == 2


# -- information exposure ----------------------------------------------------------------------
SECRET_PATH = "/srv/seekrec/registry/versions/v000003/model.safetensors"


class _BrokenState:
    """A serving state that is not ready for a reason naming a file, as a failed version load reports."""

    ready = False
    settings = SimpleNamespace(default_k=10)

    def not_ready_reason(self) -> str:
        return f"no model yet for arm(s) ['live'] (failed versions: v000003: checksum mismatch in {SECRET_PATH})"

    async def recommend(self, user_id: str, k: int, exclude_seen: bool, min_offset: int | None = None) -> None:
        raise NotReadyError(self.not_ready_reason())


def test_errors_and_readyz_name_no_paths(settings: ServeSettings, caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(settings)  # no lifespan: the state is the broken one below
    app.state.serving = _BrokenState()
    client = TestClient(app)
    with caplog.at_level(logging.WARNING, "seekrec.serving.exposure"):
        ready = client.get("/readyz")
        rec = client.post("/recommend", json={"user_id": "1"})
    assert ready.status_code == 503 and rec.status_code == 503
    for response in (ready, rec):
        assert "/srv" not in response.text and "model.safetensors" not in response.text
        assert "checksum mismatch in <path>" in response.text and "v000003" in response.text
    assert SECRET_PATH in caplog.text  # the operator still finds it in the server log


def test_redact_paths() -> None:
    assert redact_paths("cannot open /a/b.db or C:\\x\\y.pt") == "cannot open <path> or <path>"
    assert redact_paths("redis://user:pw@10.0.0.1:6379/0 is down") == "<path> is down"
    plain = "no arm can add items: v1 is a sequence model (seekrec stream-train)"
    assert redact_paths(plain) == plain


def test_docs_are_off_unless_asked(settings: ServeSettings) -> None:
    client = TestClient(create_app(settings))
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["paths"]["/recommend"]
    docs = TestClient(create_app(replace(settings, docs=True)))
    assert docs.get("/docs").status_code == 200


def test_keys_file_path_comes_from_cli_and_toml(tmp_path: Path) -> None:
    s = ServeSettings.load(None, ["metrics_require_key=true"], registry=tmp_path, event_log="e.db",
                           api_keys_file=str(tmp_path / "keys.txt"))
    assert s.api_keys_file == tmp_path / "keys.txt" and s.metrics_require_key and not s.docs
    with pytest.raises(ValueError, match="metrics_require_key"):
        ServeSettings(registry=tmp_path, event_log="e.db", metrics_require_key="yes")  # type: ignore[arg-type]


def test_seekrec_serve_with_a_keys_file(tmp_path: Path, keyed_settings: ServeSettings) -> None:
    """The real command, as a child process: flags reach the key store and ``serve()`` binds with keys."""
    import subprocess
    import sys

    import httpx

    from seekrec.serving.process import free_port, wait_ready

    port, logfile = free_port(), tmp_path / "server.log"
    cmd = [sys.executable, "-m", "seekrec.cli", "serve", "--registry", str(keyed_settings.registry),
           "--event-log", keyed_settings.event_log, "--data", str(keyed_settings.data_dir), "--port", str(port),
           "--api-keys-file", str(keyed_settings.api_keys_file), "--metrics-require-key"]
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, logfile)
        event = {"events": [{"user_id": "1", "item_id": "2"}]}
        assert httpx.post(base + "/events", json=event).status_code == 401
        assert httpx.post(base + "/events", json=event, headers=_auth("ingest")).status_code == 200
        assert httpx.get(base + "/metrics").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = logfile.read_text()
    assert "API keys required on 127.0.0.1" in text
    assert not any(key in text or hash_key(key) in text for key in KEYS.values())  # secrets never logged
