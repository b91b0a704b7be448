"""deploy/prometheus/alerts.yml: promtool accepts it, its unit tests pass, every rule is tested firing and not
firing, has a runbook, and names only series seekrec exports."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.helpers import DEPLOY, exported_series, promql_series, require_tool

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus; .ci/run installs it")
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        out = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr


def test_every_rule_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case["exp_alerts"]))
    for rule in _rules():
        assert set(cases.get(rule["alert"], [])) == {True, False}, f"{rule['alert']} needs a firing and a quiet case"


def test_every_rule_has_a_runbook_and_names_only_exported_series() -> None:
    exported = exported_series()
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names))
    for rule in _rules():
        assert rule["annotations"]["runbook"] and rule["annotations"]["summary"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        unknown = promql_series(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} names {unknown}, which neither the server nor the trainer exports"

