"""``seekrec experiment``: the report from logs, and status / operator actions against a server (a stand-in HTTP
server here, which records what the command sent; tests/serving/test_rollouts.py covers the real routes)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from seekrec.cli import main
from tests.experiments.test_report import _write_world

STATUS = {"layers": [{"name": "model", "experiments": [
    {"name": "rollout", "control": "pinned", "rollout": True,
     "arms": [{"name": "pinned", "version": "v000001", "share": None}, {"name": "online", "version": "current"}]}]}],
    "rollouts": {"rollout": {"stage": 3, "steps": 10, "treatment_share": 0.3, "status": "running",
                             "last_decision": {"action": "advance", "reasons": ["guardrails hold"]}}},
    "stages": {"rollout": 3}}


@pytest.fixture
def server():
    seen: list[tuple[str, str, str | None, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, self.headers.get("Authorization"), body))
            ok = self.headers.get("Authorization") == "Bearer admin-key"
            payload = json.dumps(STATUS if ok else {"detail": "needs the admin role"}).encode()
            self.send_response(200 if ok else 403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


def test_status_and_operator_actions(server, monkeypatch, capsys):
    url, seen = server
    monkeypatch.setenv("SEEKREC_API_KEY", "admin-key")
    assert main(["experiment", "status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "rollout: stage 3/10 (30% of users), running; last: advance (guardrails hold)" in out
    assert main(["experiment", "rollback", "rollout", "--url", url, "--reason", "CTR fell"]) == 0
    assert seen[-1][:3] == ("POST", "/experiments/rollout/rollback", "Bearer admin-key")
    assert json.loads(seen[-1][3]) == {"reason": "CTR fell"}
    monkeypatch.setenv("SEEKREC_API_KEY", "wrong")
    capsys.readouterr()
    assert main(["experiment", "advance", "rollout", "--url", url]) == 2
    assert "HTTP 403" in capsys.readouterr().err


def test_report_from_the_logs(tmp_path, capsys):
    outcome_url, event_url = _write_world(tmp_path, {"control": 200, "treatment": 200},
                                          {"control": 0.05, "treatment": 0.08})
    code = main(["experiment", "report", "--outcome-log", outcome_url, "--event-log", event_url, "--layer", "model",
                 "--control", "control", "--shares", "control=0.5,treatment=0.5", "--out", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "treatment vs control ctr" in out and "sample ratio" in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["arms"]) == {"control", "treatment"} and (tmp_path / "report" / "report.png").is_file()
