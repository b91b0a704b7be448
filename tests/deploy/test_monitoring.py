"""deploy/prometheus and deploy/grafana: a Prometheus config promtool accepts that scrapes the compose
server's /metrics, and Grafana provisioning that points at that Prometheus and at the dashboards folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.deploy.helpers import DEPLOY, compose_seekrec_commands, compose_services, require_tool

PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def mounts(service: str) -> dict[str, Path]:
    """The service's bind mounts: container path -> file or folder here."""
    found = {}
    for volume in compose_services()[service]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            found[target] = (DEPLOY / source).resolve()
    return found


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus; .ci/run installs it")
    out = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_scrapes_the_server_and_the_trainer_and_loads_the_alerts() -> None:
    from seekrec.serving.routes.metrics import router

    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"seekrec-server", "seekrec-trainer"}
    assert jobs["seekrec-server"]["metrics_path"] == "/metrics" and "/metrics" in {r.path for r in router.routes}
    commands = compose_seekrec_commands()
    assert jobs["seekrec-server"]["static_configs"][0]["targets"] == [f"server:{commands['server'].config.port}"]
    trainer = commands["online-trainer"].config
    assert trainer.metrics_host == "0.0.0.0", "the trainer's metrics port must be reachable from Prometheus' container"
    assert jobs["seekrec-trainer"]["static_configs"][0]["targets"] == [f"online-trainer:{trainer.metrics_port}"]
    command = compose_services()["prometheus"]["command"]
    config_file = next(a.split("=", 1)[1] for a in command if a.startswith("--config.file="))
    assert mounts("prometheus")[config_file] == PROMETHEUS.resolve()
    (rules,) = config["rule_files"]
    assert mounts("prometheus")[str(Path(config_file).parent / rules)] == (PROMETHEUS.parent / rules).resolve()


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_folder() -> None:
    grafana = mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == PROVISIONING.resolve()
    (datasource,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and datasource["uid"] == "prometheus" and datasource["isDefault"]
    assert url.hostname == "prometheus" and "prometheus" in compose_services()
    assert f"127.0.0.1:{url.port}/" in compose_services()["prometheus"]["healthcheck"]["test"][-1], \
        "the datasource's port is the one Prometheus serves"
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "seekrec.yml").read_text())["providers"]
    assert provider["type"] == "file"
    dashboards = grafana[provider["options"]["path"]]
    assert dashboards == (DEPLOY / "grafana" / "dashboards").resolve()
    assert (dashboards / "README.md").is_file(), "the folder says what each dashboard shows"
    for dashboard in dashboards.glob("*.json"):
        assert "panels" in json.loads(dashboard.read_text()), f"{dashboard.name} is not a Grafana dashboard"
