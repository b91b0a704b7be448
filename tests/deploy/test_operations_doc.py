"""docs/operations.md documents every series seekrec exports and every alert rule."""

from __future__ import annotations

import yaml

from tests.deploy.helpers import DEPLOY, REPO

PAGE = REPO / "docs" / "operations.md"


def test_every_exported_metric_is_documented() -> None:
    from seekrec.online.metrics import TrainerMetrics
    from seekrec.serving.metrics import ServingMetrics

    page = PAGE.read_text()
    for registry in (ServingMetrics().registry, TrainerMetrics().registry):
        for family in registry.collect():
            if family.name.startswith("process_"):
                continue  # prometheus-client's process collector: documented as a group
            shown = family.name + ("_total" if family.type == "counter" else "")
            assert f"`{shown}`" in page, f"docs/operations.md does not document {shown}"


def test_every_alert_is_documented() -> None:
    page = PAGE.read_text()
    for group in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert f"`{rule['alert']}`" in page, f"docs/operations.md does not document {rule['alert']}"
