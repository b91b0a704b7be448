"""A real Prometheus (Debian's 2.x binary) on loopback scrapes a running server and online trainer: the metrics
arrive, and stopping the trainer while events keep coming turns SeekrecTrainerNotPublishing pending, then firing.

The rule is the one in deploy/prometheus/alerts.yml, with its 10-minute threshold and 5-minute `for` scaled
down to seconds (and scrapes and evaluations every second), so the whole run is bounded by DEADLINE_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from seekrec.serving.process import free_port, wait_ready
from tests.deploy.helpers import DEPLOY, REPO, require_tool

pytestmark = pytest.mark.slow
DEADLINE_S = 90.0  # every wait below shares this bound
ALERT = "SeekrecTrainerNotPublishing"
THRESHOLD_S, FOR = 4, "3s"  # the rule's 600 s and 5m, scaled down


def _scaled_rule() -> dict[str, Any]:
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    (rule,) = [r for r in rules if r.get("alert") == ALERT]
    assert "> 600" in rule["expr"] and rule["for"] == "5m", "the rule changed: update the scaling here"
    return {**rule, "expr": rule["expr"].replace("> 600", f"> {THRESHOLD_S}"), "for": FOR}


class Processes:
    """Children started by the test, each with its log file; all are stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.procs = logs, {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process in stop_all
        self.procs[name] = (subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        return self.procs[name][0]

    def stop(self, name: str) -> None:
        proc, log = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    children = Processes(tmp_path)
    yield children
    children.stop_all()


def _train_base(sim_data_dir: Path, registry: Path, run: Path) -> None:
    from seekrec.registry import ModelRegistry
    from seekrec.training.experiment import ExperimentConfig, train_experiment

    overrides = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12", "train.batch_size=16",
                 "train.max_epochs=1"]
    train_experiment(ExperimentConfig.load(None, overrides), sim_data_dir, run)
    ModelRegistry(registry).publish_run(run)


def _until(predicate: Callable[[], Any], what: str, deadline: float) -> Any:
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_prometheus_scrapes_both_and_alerts_when_the_trainer_stops(tmp_path: Path, sim_data_dir: Path,
                                                                   processes: Processes) -> None:
    prometheus = require_tool("prometheus", "apt-get install prometheus; .ci/run installs it")
    deadline = time.monotonic() + DEADLINE_S
    registry, events = tmp_path / "registry", f"sqlite://{tmp_path / 'events.db'}"
    _train_base(sim_data_dir, registry, tmp_path / "run")
    server_port, trainer_port, prom_port = free_port(), free_port(), free_port()
    server = f"http://127.0.0.1:{server_port}"
    proc = processes.start("server", [sys.executable, "tests/serving/server_process.py", str(registry), events,
                                      str(sim_data_dir), str(server_port)])
    wait_ready(server, proc, tmp_path / "server.log", timeout=deadline - time.monotonic())
    processes.start("trainer", [sys.executable, "-m", "seekrec.cli", "stream-train", "--registry", str(registry),
                                "--event-log", events, "--data", str(sim_data_dir), "--state", str(tmp_path / "state"),
                                "--metrics-port", str(trainer_port), "--publish-every-seconds", "0.5",
                                "--events-per-step", "8", "--block-ms", "200", "--threads", "1", "--device", "cpu"])
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "live", "rules": [_scaled_rule()]}]}))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "seekrec-server", "static_configs": [{"targets": [f"127.0.0.1:{server_port}"]}]},
                           {"job_name": "seekrec-trainer", "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"]}]}]}))
    processes.start("prometheus", [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"])
    api = f"http://127.0.0.1:{prom_port}/api/v1"

    def query(expr: str) -> list[dict[str, Any]]:
        try:
            body = httpx.get(f"{api}/query", params={"query": expr}, timeout=5).json()
        except httpx.HTTPError:
            return []  # not listening yet
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alert_state() -> str | None:
        alerts = httpx.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
        return next((a["state"] for a in alerts if a["labels"]["alertname"] == ALERT), None)

    def post_events(n: int, start: int) -> None:
        batch = [{"user_id": str(1 + k % 20), "item_id": str(1 + k % 30)} for k in range(start, start + n)]
        assert httpx.post(f"{server}/events", json={"events": batch}, timeout=10).status_code == 200

    # (a) the metrics arrive: both targets up, the trainer's publishes and the server's traffic and freshness
    post_events(40, 0)
    httpx.post(f"{server}/recommend", json={"user_id": "3"}, timeout=10).raise_for_status()
    _until(lambda: len(query('up{job=~"seekrec-.*"} == 1')) == 2, "both targets up", deadline)
    _until(lambda: query("seekrec_trainer_versions_published_total > 0"), "a publish in Prometheus", deadline)
    _until(lambda: query("seekrec_event_freshness_seconds_count > 0"), "a freshness observation", deadline)
    for expr in ('seekrec_http_requests_total{route="/recommend"}', "seekrec_trainer_events_total",
                 'seekrec_stage_duration_seconds_count{stage="encode"}', "process_resident_memory_bytes"):
        assert query(expr), f"{expr} did not arrive"
    # the base version may have aged past the threshold while the trainer started; once it publishes, no alert
    _until(lambda: alert_state() is None, "no alert while the trainer publishes", deadline)

    # (b) stop the trainer; events keep coming, nothing publishes: pending, then firing
    processes.stop("trainer")
    post_events(10, 40)
    _until(lambda: alert_state() == "pending", f"{ALERT} pending", deadline)
    _until(lambda: alert_state() == "firing", f"{ALERT} firing", deadline)
    assert query('up{job="seekrec-trainer"} == 0'), "Prometheus sees the trainer gone"
