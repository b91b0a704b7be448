"""Screenshots of the Grafana dashboards without Grafana: each dashboard JSON drawn as a PNG from real data.

    PYTHONPATH=src python deploy/grafana/preview.py [--seconds 90] [--out docs/dashboards] [--workdir DIR]

It simulates the quick demo's world and trains its first model (``seekrec.demo.run.prepare``), then runs
``seekrec serve`` with the demo's frozen vs real-time A/B test, ``seekrec stream-train --metrics-port`` and
the demo's simulated users for ``--seconds``, while a Prometheus on loopback (the ``prometheus`` binary on
PATH) scrapes both every second and evaluates ``deploy/prometheus/alerts.yml``. Afterwards every panel's
queries go to ``/api/v1/query_range`` over the run (from the trainer's first publish), their range windows
(``[5m]``, ``[1h]`` ...) shortened to ``--window`` so that a rate is the run's recent rate, not its total divided
by five minutes (the title says so; ``--window keep`` keeps them). matplotlib lays the panels out on the
dashboard's grid as Grafana would: titles, units on the axis, legends from the legend templates, red thresholds.
A panel whose queries returned nothing says so and why, rather than disappearing. Takes about 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402 - after choosing the backend
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
COLUMNS, ROW_INCHES, WIDTH_INCHES, HEADER_INCHES = 24, 0.42, 16.0, 0.5  # Grafana's grid is 24 columns wide
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"  # Grafana's dark theme
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642"]
# why a query may return no series in a short quick-demo run: (substring of the expression, reason)
NO_DATA_WHY = [
    ('status=~"5.."', "no 5xx responses (the ratio has no series before the first)"),
    ("offset 1h", "the trailing day ends an hour ago, before this run began"),
    ('event_type="purchase"', "the simulated users click but never purchase"),
    ("seekrec_predicted_ctr", "only calibrated rankers (a pipeline arm) report it; the demo's arms serve SASRec"),
    ("seekrec_observed_ctr", "only calibrated rankers (a pipeline arm) report it; the demo's arms serve SASRec"),
    ("seekrec_prediction_mape", "only calibrated rankers (a pipeline arm) report it; the demo's arms serve SASRec"),
    ("seekrec_drift_psi", "an arm needs 500 requests on one version for the reference, then 100 more"),
    ("_total", "none happened (a labelled counter has no series before its first increment)"),
]
MAX_LEGEND = 12  # legend entries shown; the rest are counted
Series = dict[str, Any]  # one element of a Prometheus matrix result: {"metric": labels, "values": [[t, "v"], ...]}


# -- the pure part: legends, layout, units, drawing ----------------------------------------------------------
def expand_legend(template: str, labels: dict[str, str]) -> str:
    """Grafana's legend: ``{{label}}`` replaced by the series' value (empty when it has none); with no template,
    the series as PromQL writes it."""
    if not template:
        name = labels.get("__name__", "")
        rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{rest}}}" if rest or not name else name
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def layout(panels: list[dict[str, Any]]) -> tuple[list[tuple[float, float, float, float]], float]:
    """Each panel's (left, bottom, width, height) in figure fractions from its gridPos, and the figure's height
    in inches (grid rows plus the dashboard title)."""
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = rows * ROW_INCHES + HEADER_INCHES
    boxes = []
    for p in panels:
        g = p["gridPos"]  # y counts down from the top; the figure's bottom counts up
        boxes.append((g["x"] / COLUMNS, (rows - g["y"] - g["h"]) * ROW_INCHES / height, g["w"] / COLUMNS,
                      g["h"] * ROW_INCHES / height))
    return boxes, height


def format_value(value: float, unit: str) -> str:
    """A tick label in the panel's Grafana unit."""
    if unit == "percentunit":
        return f"{100 * value:.3g}%"
    if unit == "s":
        return f"{1000 * value:.3g} ms" if abs(value) < 1 and value else f"{value:.3g} s"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB" if abs(value) < 2**30 else f"{value / 2**30:.2f} GiB"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{letter}{suffix}"
    return f"{value:.3g}{suffix}"


def no_data_reason(expr: str) -> str:
    """Why ``expr`` may have returned nothing in a short demo run (the first known reason that applies)."""
    return next((why for needle, why in NO_DATA_WHY if needle in expr), "no series in this run")


def shorten_windows(expr: str, window: str) -> str:
    """``expr`` with every range window (``[5m]``, ``[1d]``) replaced by ``[window]``; offsets are kept."""
    return re.sub(r"\[\d+[smhdwy]\]", f"[{window}]", expr)


def _points(series: Series) -> tuple[list[datetime], list[float]]:
    times = [datetime.fromtimestamp(float(t), tz=timezone.utc) for t, _ in series["values"]]
    return times, [float(v) for _, v in series["values"]]  # "NaN" and "+Inf" parse; NaN leaves a gap


def _has_data(series: Series) -> bool:
    return any(abs(float(v)) != float("inf") and float(v) == float(v) for _, v in series["values"])


def draw_panel(fig: plt.Figure, box: tuple[float, float, float, float], panel: dict[str, Any],
               results: list[list[Series]]) -> None:
    """One panel in ``box``: background and title, then lines (or a table) with legend, or a no-data note.
    ``results`` holds one Prometheus matrix per target of the panel."""
    left, bottom, width, height = box
    pad = 0.003
    fig.add_artist(Rectangle((left + pad, bottom + pad), width - 2 * pad, height - 2 * pad, transform=fig.transFigure,
                             facecolor=PANEL, edgecolor=GRID, linewidth=0.8, zorder=-1))  # under the axes
    fig.text(left + 0.01, bottom + height - 0.012, panel["title"], color=TEXT, fontsize=9, fontweight="bold",
             va="top", ha="left")
    ax = fig.add_axes((left + 0.055, bottom + 0.3 * height, width - 0.07, 0.56 * height), facecolor=PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=TEXT, labelsize=7, length=0)
    targets = panel["targets"]
    missing = [(t, no_data_reason(t["expr"])) for t, found in zip(targets, results)
               if not any(_has_data(s) for s in found)]
    if len(missing) == len(targets):
        ax.set_axis_off()
        reasons = sorted({why for _, why in missing})
        ax.text(0.5, 0.5, "no data in this run:\n" + "\n".join(reasons), color=TEXT, fontsize=8, ha="center",
                va="center", transform=ax.transAxes, wrap=True)
        return
    unit = panel["fieldConfig"]["defaults"].get("unit", "none")
    if panel["type"] == "table":
        _draw_table(ax, [s for found in results for s in found])
        return
    color = 0
    for target, found in zip(targets, results):
        for series in sorted(found, key=lambda s: sorted(s["metric"].items())):
            times, values = _points(series)
            sparse = sum(v == v for v in values) < 4  # Grafana shows the points of a short-lived series
            ax.plot(times, values, color=PALETTE[color % len(PALETTE)], linewidth=1.2, marker="o" if sparse else "",
                    markersize=2, label=expand_legend(target["legendFormat"], series["metric"]))
            color += 1
    threshold = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [{}])[-1].get("value")
    if threshold is not None:
        ax.axhline(threshold, color="#f2495c", linestyle="--", linewidth=1.0)
    ax.grid(color=GRID, linewidth=0.6)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) > MAX_LEGEND:
        keep, more = MAX_LEGEND - 1, f"... {len(labels) - MAX_LEGEND + 1} more"
        handles, labels = [*handles[:keep], plt.Line2D([], [], linestyle="")], [*labels[:keep], more]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(0, -0.1), ncol=4, frameon=False, fontsize=7,
              labelcolor=TEXT, handlelength=1.2, columnspacing=1.5)
    if missing:
        fig.text(left + 0.01, bottom + 0.012, "no data in this run: " + "; ".join(
            f"{expand_legend(t['legendFormat'], {}).strip(' :') or t['refId']}: {why}" for t, why in missing),
            color="#a0a0b0", fontsize=6.5, va="bottom", ha="left")


def _draw_table(ax: plt.Axes, series: list[Series]) -> None:
    """A Grafana table of the series present at the end of the range: one row each, a column per label."""
    end = max(float(s["values"][-1][0]) for s in series if s["values"])
    rows = [s["metric"] for s in series if s["values"] and float(s["values"][-1][0]) == end]
    columns = sorted({k for r in rows for k in r if k not in ("__name__", "instance", "job")})
    ax.set_axis_off()
    table = ax.table(cellText=[[r.get(c, "") for c in columns] for r in rows], colLabels=columns, loc="upper center",
                     cellLoc="left")
    table.set_fontsize(8)
    for cell in table.get_celld().values():
        cell.set(facecolor=PANEL, edgecolor=GRID)
        cell.get_text().set_color(TEXT)


def render(dashboard: dict[str, Any], results: dict[int, list[list[Series]]], path: Path, note: str = "",
           dpi: int = 90) -> Path:
    """Draw ``dashboard`` (Grafana JSON) with ``results`` (panel id -> one Prometheus matrix per target) to ``path``;
    ``note`` goes beside the title."""
    boxes, height = layout(dashboard["panels"])
    fig = plt.figure(figsize=(WIDTH_INCHES, height), facecolor=BACKGROUND)
    fig.text(0.01, 1 - 0.25 / height, dashboard["title"], color=TEXT, fontsize=13, va="center")
    fig.text(0.99, 1 - 0.25 / height, note, color="#a0a0b0", fontsize=8, va="center", ha="right")
    for panel, box in zip(dashboard["panels"], boxes):
        draw_panel(fig, box, panel, results.get(panel["id"], [[] for _ in panel["targets"]]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor=BACKGROUND)
    plt.close(fig)
    return path


# -- the live part: a quick demo scraped by a real Prometheus ------------------------------------------------
def _start(name: str, argv: list[str], workdir: Path, stack: ExitStack) -> subprocess.Popen:
    from seekrec.serving.auth import ENV_VAR as API_KEYS_ENV
    from seekrec.serving.process import start_logged

    # the children run this checkout's seekrec; the simulated users send no API key
    env = {k: v for k, v in os.environ.items() if k != API_KEYS_ENV} | {"PYTHONPATH": str(REPO / "src")}
    return start_logged(argv, workdir / f"{name}.log", stack, env)


def _prometheus_config(workdir: Path, server_port: int, trainer_port: int) -> Path:
    jobs = {"seekrec-server": server_port, "seekrec-trainer": trainer_port}  # the dashboards' job=~"seekrec-.*"
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(ALERTS)],
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                                 for job, port in jobs.items()]}
    path = workdir / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def live_results(workdir: Path, seconds: float, window: str | None,
                 step: float = 2.0) -> dict[str, dict[int, list[list[Series]]]]:
    """Run the quick demo's loop for ``seconds`` under a Prometheus; every dashboard panel's range results, range
    windows shortened to ``window`` (None: as the dashboards have them)."""
    import httpx

    from seekrec.demo.run import DEMO_EXPERIMENT, FROZEN, REALTIME, DemoConfig, prepare
    from seekrec.demo.traffic import run_traffic
    from seekrec.serving.process import free_port, wait_ready

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("prometheus is not on PATH (apt-get install prometheus)")
    workdir = workdir.resolve()
    print(f"simulating the quick demo's world and training its first model in {workdir} ...")
    sim, data_dir, version, registry = prepare(DemoConfig(workdir=workdir, quick=True))
    events = f"sqlite:///{workdir / 'events.db'}"
    server_port, trainer_port, prom_port = free_port(), free_port(), free_port()
    cli, base = [sys.executable, "-m", "seekrec.cli"], f"http://127.0.0.1:{server_port}"
    dashboards = {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    with ExitStack() as stack:
        trainer = _start("trainer", [*cli, "stream-train", "--registry", str(registry.root), "--event-log", events,
                                     "--data", str(data_dir), "--state", str(workdir / "online"),
                                     "--publish-every-seconds", "1.0", "--publish-every-events", "500", "--lr", "3e-3",
                                     "--threads", "1", "--metrics-port", str(trainer_port)], workdir, stack)
        server = _start("server", [*cli, "serve", "--registry", str(registry.root), "--event-log", events, "--data",
                                   str(data_dir), "--port", str(server_port), "--poll-interval", "0.5", "--experiment",
                                   DEMO_EXPERIMENT, "--arm", f"{FROZEN}={version}:0.5", "--arm",
                                   f"{REALTIME}=current:0.5"], workdir, stack)
        _start("prometheus", [prometheus, f"--config.file={_prometheus_config(workdir, server_port, trainer_port)}",
                              f"--storage.tsdb.path={workdir / 'tsdb'}",
                              f"--web.listen-address=127.0.0.1:{prom_port}"], workdir, stack)
        wait_ready(base, server, workdir / "server.log")
        print(f"server, online trainer and Prometheus up; simulated users for {seconds:.0f} s ...")
        start = time.time()
        driver = threading.Thread(target=run_traffic, args=(base, sim), daemon=True,
                                  kwargs={"duration_s": seconds, "workers": 4, "browse_share": 0.2})
        driver.start()
        while driver.is_alive():
            driver.join(timeout=5.0)
            if trainer.poll() is not None or server.poll() is not None:
                raise RuntimeError(f"the server or the online trainer exited; see the logs in {workdir}")
        time.sleep(3.0)  # the last scrapes
        end = time.time()
        api = f"http://127.0.0.1:{prom_port}/api/v1/query_range"

        def query(expr: str) -> list[Series]:
            expr = shorten_windows(expr, window) if window else expr
            body = httpx.get(api, params={"query": expr, "start": start, "end": end, "step": step}, timeout=30).json()
            if body["status"] != "success":
                raise RuntimeError(f"Prometheus rejected {expr!r}: {body.get('error')}")
            return body["data"]["result"]

        # before the trainer's first publish its timestamp is 0 (time() - 0 would dwarf every later point)
        published = query("seekrec_trainer_last_publish_timestamp_seconds > 0")
        start = min((float(s["values"][0][0]) for s in published), default=start)

        return {name: {p["id"]: [query(t["expr"]) for t in p["targets"]] for p in d["panels"]}
                for name, d in dashboards.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the live run (default 90)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboards", help="where the PNGs go")
    parser.add_argument("--window", default="30s",
                        help="range window replacing the dashboards' [5m], [1h] ... ('keep': leave them; default 30s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data, logs and the TSDB here (default: a temporary directory, removed)")
    args = parser.parse_args()
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seekrec-preview-")))
        workdir.mkdir(parents=True, exist_ok=True)
        window = None if args.window == "keep" else args.window
        results = live_results(workdir, args.seconds, window)
    note = (f"quick demo, {args.seconds:.0f} s, scraped every 1 s" +
            (f"; range windows shortened to [{window}]" if window else "") + "; drawn by deploy/grafana/preview.py")
    for name, panels in results.items():
        dashboard = json.loads((DASHBOARDS / f"{name}.json").read_text())
        path = render(dashboard, panels, args.out / f"{name.removeprefix('seekrec-')}.png", note)
        empty = [p["title"] for p in dashboard["panels"] if not any(_has_data(s) for m in panels[p["id"]] for s in m)]
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)" + (f"; no data: {empty}" if empty else ""))


if __name__ == "__main__":
    main()
