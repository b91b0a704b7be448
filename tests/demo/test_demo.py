import json

import pytest

from seekrec.demo.run import DemoConfig, run_demo


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """Simulator -> training -> registry -> server + online trainer -> simulated users -> report."""
    lines = []
    report = run_demo(DemoConfig(workdir=tmp_path, quick=True, live_seconds=12, workers=2), show=lines.append)
    assert report["requests"] > 20 and report["errors"] == 0
    assert report["versions_published"] >= 2, "the online trainer must publish while users click"
    assert report["freshness_seconds"]["events_measured"] > 0
    assert set(report["ab_test"]) >= {"mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value"}
    assert json.loads((tmp_path / "report.json").read_text())["requests"] == report["requests"]
    assert any("Welch" in line for line in lines)
    # the frozen arm cannot show an item released after it was trained; the live model may
    assert report["released_items_shown_share"].get("frozen", 0.0) == 0.0
