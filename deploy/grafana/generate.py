"""Writes the Grafana dashboards in ./dashboards/ from the panel lists below: `python deploy/grafana/generate.py`.

Generated rather than hand-edited so that every panel is one readable line of PromQL here;
tests/deploy/test_dashboards.py checks that the JSON files are this script's output, that promtool parses
every expression and that each names only series the server or the online trainer exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # ../provisioning/datasources/prometheus.yml
WIDTH, HEIGHT = 12, 8  # two panels per row

CTR_1H = ('sum by (arm) (rate(seekrec_attributed_events_total{event_type="click"}[1h])) '
          '/ sum by (arm) (rate(seekrec_served_items_total[1h]))')
SHOWN_1H = "sum by (arm) (increase(seekrec_served_items_total[1h]))"
# a 95% normal band of the hour's CTR: p +- 1.96 sqrt(p (1 - p) / n), n the items shown in the hour
CTR_BAND = f"1.96 * sqrt(({CTR_1H}) * (1 - ({CTR_1H})) / {SHOWN_1H})"


def q(expr: str, legend: str = "") -> dict[str, str]:
    """One query of a panel."""
    return {"expr": expr, "legend": legend}


def panel(title: str, unit: str, *queries: dict[str, str], threshold: float | None = None,
          kind: str = "timeseries") -> dict[str, Any]:
    """A panel spec: title, Grafana unit, queries, an optional red threshold line (the alert's)."""
    return {"title": title, "unit": unit, "queries": queries, "threshold": threshold, "kind": kind}


DASHBOARDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "seekrec-overview": ("seekrec: overview", [
        panel("Requests per second by route", "reqps",
              q("sum by (route) (rate(seekrec_http_requests_total[5m]))", "{{route}}")),
        panel("Recommendations per second by arm", "reqps",
              q("sum by (arm, fallback) (rate(seekrec_recommendations_total[5m]))", "{{arm}} fallback={{fallback}}")),
        panel("5xx share of requests", "percentunit",
              q('sum(rate(seekrec_http_requests_total{status=~"5.."}[5m])) / sum(rate(seekrec_http_requests_total[5m]))',
                "5xx"), threshold=0.01),
        panel("Errors by kind and failed /recommend by arm", "ops",
              q("sum by (kind) (rate(seekrec_errors_total[5m]))", "{{kind}}"),
              q("sum by (arm) (rate(seekrec_recommend_errors_total[5m]))", "recommend failed: {{arm}}"),
              q("sum by (reason) (rate(seekrec_requests_rejected_total[5m]))", "rejected: {{reason}}")),
        panel("/recommend latency", "s",
              *(q(f'histogram_quantile({p}, sum by (le) (rate(seekrec_http_request_duration_seconds_bucket'
                  f'{{route="/recommend"}}[5m])))', f"p{round(p * 100)}") for p in (0.5, 0.99)), threshold=0.05),
        panel("p99 per stage (history per request; encode, search, rank per batch)", "s",
              q("histogram_quantile(0.99, sum by (le, stage) (rate(seekrec_stage_duration_seconds_bucket[5m])))",
                "{{stage}}")),
        panel("Freshness: event acknowledged -> served by a version trained on it", "s",
              *(q(f"histogram_quantile({p}, sum by (le) (rate(seekrec_event_freshness_seconds_bucket[15m])))",
                  f"p{round(p * 100)}") for p in (0.5, 0.99)), threshold=30),
        panel("Served model age by arm, and events waiting for a version", "s",
              q("max by (arm) (seekrec_model_freshness_seconds)", "{{arm}}"),
              q("seekrec_event_freshness_pending", "events waiting (count)")),
    ]),
    "seekrec-experiments": ("seekrec: experiments", [
        panel("Model version per arm", "none", q("seekrec_model_version_info", "{{arm}}: {{version}}"), kind="table"),
        panel("Items shown per second by arm", "ops", q("sum by (arm) (rate(seekrec_served_items_total[5m]))", "{{arm}}")),
        panel("CTR per arm (last hour, 95% band)", "percentunit", q(CTR_1H, "{{arm}}"),
              q(f"{CTR_1H} - {CTR_BAND}", "{{arm}} low"), q(f"{CTR_1H} + {CTR_BAND}", "{{arm}} high")),
        panel("CTR per arm: last hour against the trailing day (the drop alert's baseline)", "percentunit",
              q(CTR_1H, "{{arm}} last hour"),
              q(CTR_1H.replace("[1h]", "[1d] offset 1h"), "{{arm}} trailing day")),
        panel("Conversion (purchases per item shown) per arm", "percentunit",
              q('sum by (arm) (rate(seekrec_attributed_events_total{event_type="purchase"}[1h])) '
                "/ sum by (arm) (rate(seekrec_served_items_total[1h]))", "{{arm}}")),
        panel("Exploration slots per second", "ops", q("rate(seekrec_explored_slots_total[5m])", "explored")),
    ]),
    "seekrec-model-quality": ("seekrec: model quality and drift", [
        panel("Predicted vs observed click rate (calibrated rankers)", "percentunit",
              q("seekrec_predicted_ctr", "{{arm}} predicted"), q("seekrec_observed_ctr", "{{arm}} observed")),
        panel("Prediction MAPE", "percentunit", q("seekrec_prediction_mape", "{{arm}}"), threshold=0.15),
        panel("Drift PSI against the version's reference", "none", q("seekrec_drift_psi", "{{arm}} {{feature}}"),
              threshold=0.2),
        panel("Catalogue coverage of recent lists", "percentunit", q("seekrec_served_coverage", "{{arm}}")),
        panel("Popularity percentile of served items, share of new items", "percentunit",
              q("seekrec_served_popularity", "{{arm}} popularity"), q("seekrec_served_new_item_share", "{{arm}} new")),
        panel("Online trainer: loss", "none", q("seekrec_trainer_loss", "loss")),
        panel("Online trainer: events per second and lag", "none",
              q("rate(seekrec_trainer_events_total[5m])", "events/s trained"),
              q("seekrec_trainer_events_per_second", "events/s of compute"),
              q("seekrec_event_log_lag", "lag: {{consumer}} (server's view)"),
              q("seekrec_trainer_lag", "lag (trainer's view)")),
        panel("Online trainer: seconds since the last publish", "s",
              q("time() - seekrec_trainer_last_publish_timestamp_seconds", "since publish"),
              q("rate(seekrec_trainer_versions_published_total[15m]) * 60", "versions per minute")),
    ]),
    "seekrec-system": ("seekrec: system", [
        panel("CPU: share of the process's CPUs", "percentunit",
              q('rate(process_cpu_seconds_total{job=~"seekrec-.*"}[1m]) / seekrec_process_cpus', "{{job}} {{instance}}"),
              threshold=0.85),
        panel("Resident memory", "bytes", q('process_resident_memory_bytes{job=~"seekrec-.*"}', "{{job}} {{instance}}")),
        panel("Open files (of the limit)", "percentunit",
              q('process_open_fds{job=~"seekrec-.*"} / process_max_fds{job=~"seekrec-.*"}', "{{job}} {{instance}}")),
        panel("Scrape targets up", "none", q('up{job=~"seekrec-.*"}', "{{job}} {{instance}}")),
        panel("Micro-batch size", "none",
              *(q(f"histogram_quantile({p}, sum by (le) (rate(seekrec_batch_size_bucket[5m])))", f"p{round(p * 100)}")
                for p in (0.5, 0.99))),
        panel("User histories kept and evicted", "none",
              q("seekrec_user_histories", "kept"), q("seekrec_user_histories_evicted", "evicted")),
    ]),
}


def grafana_panel(spec: dict[str, Any], index: int) -> dict[str, Any]:
    """A Grafana panel (schema 39) from a spec, laid out two per row."""
    defaults: dict[str, Any] = {"unit": spec["unit"]}
    if spec["threshold"] is not None:
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                               {"color": "red", "value": spec["threshold"]}]}
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    return {"id": index + 1, "type": spec["kind"], "title": spec["title"], "datasource": DATASOURCE,
            "gridPos": {"h": HEIGHT, "w": WIDTH, "x": (index % 2) * WIDTH, "y": (index // 2) * HEIGHT},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": query["expr"],
                         "legendFormat": query["legend"]} for i, query in enumerate(spec["queries"])]}


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole dashboard: the panels, a 6-hour window, 30 s refresh."""
    return {"uid": uid, "title": title, "tags": ["seekrec"], "timezone": "utc", "schemaVersion": 39, "version": 1,
            "editable": False, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
            "panels": [grafana_panel(spec, i) for i, spec in enumerate(panels)]}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(dashboard(uid, title, panels), indent=2) + "\n"
            for uid, (title, panels) in DASHBOARDS.items()}


if __name__ == "__main__":
    for name, text in render().items():
        (OUT / name).write_text(text)
