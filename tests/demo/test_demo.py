import json

import pytest

from seekrec.demo.run import DemoConfig, run_demo


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, monkeypatch):
    """Simulator -> training -> registry -> server + online trainer -> simulated users -> report; API keys
    exported for some real server do not lock the demo's own keyless users out."""
    monkeypatch.setenv("SEEKREC_API_KEYS", "read:" + "0" * 64)
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
    # the experiment rebuilt from the server's own logs: every request logged, clicks credited by request id
    experiment = report["experiment"]
    assert sum(arm["requests"] for arm in experiment["arms"].values()) == report["requests"]
    assert sum(arm["users"] for arm in experiment["arms"].values()) > 10
    assert experiment["srm"]["mismatch"] is False and (tmp_path / "experiment.png").is_file()
    assert any("always-valid p=" in line for line in lines)
    assert any(line.startswith("web console: http://127.0.0.1:") and line.split()[2].endswith("/ui") for line in lines)


@pytest.mark.slow
def test_quick_demo_on_redis_streams(tmp_path, redis_url, redis_prefix):
    """The production path end to end: server and online trainer share a Redis stream."""
    url = f"{redis_url}?stream={redis_prefix}:events"
    report = run_demo(DemoConfig(workdir=tmp_path, quick=True, live_seconds=10, workers=2, event_log=url),
                      show=lambda line: None)
    assert report["requests"] > 20 and report["errors"] == 0
    assert report["versions_published"] >= 2 and report["freshness_seconds"]["events_measured"] > 0
    # the acknowledged events are in the stream, and a second run refuses to reuse it
    from seekrec.online.factory import open_event_log

    log = open_event_log(url)
    try:
        assert log.end_offset() >= report["freshness_seconds"]["events_acknowledged"] > 0
    finally:
        log.close()
    with pytest.raises(ValueError, match="already holds"):
        run_demo(DemoConfig(workdir=tmp_path / "again", quick=True, live_seconds=1, event_log=url), show=lambda _: None)


@pytest.mark.slow
def test_quick_demo_rolls_the_real_time_model_out(tmp_path):
    """``--rollout``: the server's controller moves the real-time model through its steps while the guardrails
    hold, and the report shows the stages from the rollout's state file."""
    lines = []
    report = run_demo(DemoConfig(workdir=tmp_path, quick=True, live_seconds=24, workers=2, rollout=True),
                      show=lines.append)
    rollout = report["experiment"]["rollout"]
    assert rollout["status"] in ("running", "completed") and rollout["stage"] >= 2, rollout["history"]
    assert [h["action"] for h in rollout["history"]][:2] == ["advance", "advance"]
    assert report["errors"] == 0 and any("rollout: stage" in line for line in lines)
    assert (tmp_path / "experiments.toml").is_file()


@pytest.mark.slow
def test_quick_demo_trains_a_learner_per_arm(tmp_path):
    """``--explore-test per-arm``: greedy vs exploration, each arm served from its own registry channel by a learner
    that trains on that arm's users only; CURRENT stays the initial model."""
    from seekrec.registry import ModelRegistry

    lines = []
    report = run_demo(DemoConfig(workdir=tmp_path, quick=True, live_seconds=15, workers=2, explore_test="per-arm"),
                      show=lines.append)
    assert report["errors"] == 0 and report["ab_test"]["arm_a"] == "greedy" and report["ab_test"]["arm_b"] == "explore"
    registry = ModelRegistry(tmp_path / "registry")
    channels = registry.channels()
    assert set(channels) == {"greedy", "explore"} and registry.current() == "v000001"
    for arm, version in channels.items():
        assert registry.manifest(version)["extra"]["traffic"] == f"demo={arm}"
    served = report["experiment"]["arms"]
    assert set(served) == {"greedy", "explore"} and report["freshness_seconds"]["events_measured"] > 0
    assert any("an online learner per arm" in line for line in lines)
    assert (tmp_path / "online-greedy.log").is_file() and (tmp_path / "online-explore.log").is_file()


def test_demo_options_are_checked():
    with pytest.raises(ValueError, match="explore_test must be one of"):
        DemoConfig(explore_test="both")
    with pytest.raises(ValueError, match="choose one"):
        DemoConfig(explore_test="shared", rollout=True)


@pytest.mark.slow
def test_quick_demo_compares_the_ab_test_with_interleaving(tmp_path):
    """``--compare-designs``: half of the users in the A/B test, half interleaved, and the users each design needs."""
    lines = []
    report = run_demo(DemoConfig(workdir=tmp_path, quick=True, live_seconds=15, workers=2, compare_designs=True),
                      show=lines.append)
    assert report["errors"] == 0 and report["interleaving"]["lists"] > 100
    designs = report["designs"]
    assert designs["ab"]["users"] > 20 and designs["interleaving"]["users"] > 20
    assert 0.35 < designs["ab"]["users"] / (designs["ab"]["users"] + designs["interleaving"]["users"]) < 0.65
    assert any("users needed for p < 0.01" in line for line in lines)
    assert any("paired t-test p=" in line for line in lines)
