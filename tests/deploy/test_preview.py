"""deploy/grafana/preview.py's drawing, without the live system: legends, layout, units and a rendered PNG."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from tests.deploy.helpers import DEPLOY


def _preview() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_preview", DEPLOY / "grafana" / "preview.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preview = _preview()
OVERVIEW = json.loads((DEPLOY / "grafana" / "dashboards" / "seekrec-overview.json").read_text())


def test_legend_templates_expand_like_grafana() -> None:
    labels = {"__name__": "seekrec_recommendations_total", "arm": "frozen", "fallback": "false"}
    assert preview.expand_legend("{{arm}} fallback={{fallback}}", labels) == "frozen fallback=false"
    assert preview.expand_legend("{{ arm }}: {{version}}", labels) == "frozen: "  # a missing label is empty
    assert preview.expand_legend("", labels) == 'seekrec_recommendations_total{arm="frozen", fallback="false"}'
    assert preview.expand_legend("", {"arm": "a"}) == '{arm="a"}'


def test_panels_fill_the_grid_two_per_row_without_overlap() -> None:
    boxes, height = preview.layout(OVERVIEW["panels"])
    assert height > 4 * 8 * preview.ROW_INCHES  # four rows of eight grid units, plus the title
    for (left, bottom, width, h), panel in zip(boxes, OVERVIEW["panels"]):
        assert 0 <= left and left + width <= 1 and 0 <= bottom and bottom + h <= 1
        assert width == panel["gridPos"]["w"] / 24
    first, second, third = boxes[:3]
    assert first[1] == second[1] and first[0] < second[0]  # same row, left to right
    assert third[1] < first[1] and third[0] == first[0]  # next row, below


def test_units_on_the_axis() -> None:
    assert preview.format_value(0.25, "percentunit") == "25%"
    assert preview.format_value(0.012, "s") == "12 ms"
    assert preview.format_value(30, "s") == "30 s"
    assert preview.format_value(3 * 2**20, "bytes") == "3 MiB"
    assert preview.format_value(1500, "reqps") == "1.5k req/s"
    assert preview.no_data_reason("seekrec_drift_psi").startswith("an arm needs 500 requests")


def test_range_windows_shorten_for_a_short_run_and_offsets_stay() -> None:
    expr = "sum(rate(a_total[1h])) / sum(rate(b_total[1d] offset 1h)) + rate(c_total[5m])"
    assert preview.shorten_windows(expr, "30s") == \
        "sum(rate(a_total[30s])) / sum(rate(b_total[30s] offset 1h)) + rate(c_total[30s])"


def test_a_dashboard_with_fake_results_renders_a_png(tmp_path: Path) -> None:
    def matrix(labels: dict[str, str], values: list[float], start: int = 0) -> dict:
        return {"metric": labels, "values": [[1_700_000_000 + 2 * (start + i), str(v)] for i, v in enumerate(values)]}

    # the first panel has data, the 5xx panel none: it is drawn with its note, not left out; the model age panel has
    # a short-lived series per version, more than its legend shows
    requests = [matrix({"route": "/recommend"}, [10, 12, 11, "NaN", 13]), matrix({"route": "/events"}, [3, 4, 4, 5, 5])]
    versions = [matrix({"arm": "realtime", "version": f"v{i:06d}"}, [0.5], start=i) for i in range(20)]
    results = {1: [requests], 3: [[]], 8: [versions, []]}
    path = preview.render(OVERVIEW, results, tmp_path / "overview.png", note="fake data")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0 < path.stat().st_size < 300_000
