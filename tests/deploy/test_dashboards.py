"""deploy/grafana/dashboards: the JSON is deploy/grafana/generate.py's output, promtool parses every panel's
PromQL, and every series a panel names is one the server or the online trainer exports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import yaml

from tests.deploy.helpers import DEPLOY, exported_series, promql_series, require_tool

DASHBOARDS = DEPLOY / "grafana" / "dashboards"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", DEPLOY / "grafana" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expressions() -> list[tuple[str, str]]:
    """``(dashboard / panel title, expr)`` of every query of every dashboard file."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [(f"{path.name} / {panel['title']}", target["expr"]) for target in panel["targets"]]
    return found


def test_the_dashboards_are_the_generators_output() -> None:
    rendered = _generator().render()
    assert {p.name for p in DASHBOARDS.glob("*.json")} == set(rendered)
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run python deploy/grafana/generate.py"
    assert set(rendered) == {"seekrec-overview.json", "seekrec-experiments.json", "seekrec-model-quality.json",
                             "seekrec-system.json"}
    readme = (DASHBOARDS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in rendered), "the README lists every dashboard"


def test_every_panel_uses_the_provisioned_datasource_and_fits_the_grid() -> None:
    for path in DASHBOARDS.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["uid"] == path.stem and doc["panels"]
        for panel in doc["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"} and panel["targets"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_promtool_parses_every_panel_expression(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus; .ci/run installs it")
    expressions = _expressions()
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"seekrec_dashboard:panel_{i}", "expr": expr}
                                                         for i, (_, expr) in enumerate(expressions)]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(expressions)} rules found" in out.stdout


def test_every_panel_names_only_exported_series() -> None:
    exported = exported_series()
    for where, expr in _expressions():
        named = promql_series(expr)
        assert named, f"{where}: no seekrec series in {expr!r}"
        assert not named - exported, f"{where} names {named - exported}, which neither the server nor the trainer exports"
