"""The report rebuilt from the two logs a server writes: per-arm figures, comparisons, SRM, plots."""

from __future__ import annotations

import numpy as np
import pytest

from seekrec.experiments.outcome_stores import open_outcome_log
from seekrec.experiments.outcomes import ServedList
from seekrec.experiments.report import build_report, format_report, load_outcomes, plot_report
from seekrec.online.event_log import Event
from seekrec.online.factory import open_event_log

LAYER = "model"


def _write_world(tmp_path, users_per_arm: dict[str, int], ctr: dict[str, float], seed: int = 0, lists: int = 3):
    """Each user is served ``lists`` lists of 5 items, 30 s apart; each shown item is clicked with its arm's CTR."""
    rng = np.random.default_rng(seed)
    served, events = [], []
    t0 = 1_800_000_000.0
    for arm, n in users_per_arm.items():
        for u in range(n):
            for r in range(lists):
                t = t0 + 30 * r + u * 0.01
                items = [str(i) for i in rng.choice(100, 5, replace=False) + 1]
                rid = f"{arm}-{u}-{r}"
                served.append(ServedList(rid, f"{arm}-{u}", t, {LAYER: arm}, "v000001", items, 5.0, False))
                events += [Event(f"{arm}-{u}", item, t + 1, request_id=rid) for item in items if rng.random() < ctr[arm]]
    outcome_url, event_url = str(tmp_path / "served.db"), str(tmp_path / "events.db")
    with open_outcome_log(outcome_url) as log:
        log.append(served)
    with open_event_log(event_url) as log:
        log.append(events)
    return outcome_url, event_url


def test_a_report_from_the_logs_compares_the_arms_and_plots(tmp_path):
    outcome_url, event_url = _write_world(tmp_path, {"control": 300, "treatment": 300},
                                          {"control": 0.05, "treatment": 0.10})
    outcomes = load_outcomes(outcome_url, event_url, window_s=60)
    report = build_report(outcomes, LAYER, "control", catalog_size=100,
                          expected_shares={"control": 0.5, "treatment": 0.5}, bucket_s=20)
    ctr = report.comparisons["treatment"]["ctr"]
    assert report.arms["control"].ctr == pytest.approx(0.05, abs=0.01)
    assert ctr["diff"] == pytest.approx(0.05, abs=0.015) and ctr["p_value"] < 1e-6 and ctr["ci_low"] > 0
    assert report.srm["mismatch"] is False and report.to_dict()["sequential_p"]["treatment"] < 0.01
    text = format_report(report)
    assert "treatment vs control ctr" in text and "always-valid p=" in text and "sample ratio" in text
    png = plot_report(report, tmp_path / "report.png")
    assert png.stat().st_size > 10_000


def test_a_broken_split_is_flagged(tmp_path):
    """52/48 where 50/50 was configured, 10,000 users: the sample-ratio check says the assignment is broken."""
    outcome_url, event_url = _write_world(tmp_path, {"control": 5200, "treatment": 4800},
                                          {"control": 0.05, "treatment": 0.05}, lists=1)
    report = build_report(load_outcomes(outcome_url, event_url, window_s=60), LAYER, "control", catalog_size=100,
                          expected_shares={"control": 0.5, "treatment": 0.5}, bucket_s=60)
    assert report.srm["mismatch"] is True and report.srm["p_value"] < 1e-3
    assert "MISMATCH" in format_report(report)
    with pytest.raises(ValueError, match="control arm 'nobody'"):
        build_report(load_outcomes(outcome_url, event_url), LAYER, "nobody", catalog_size=100)


def test_an_interleaving_experiment_is_judged_by_its_users_votes(tmp_path):
    """Lists whose second ranker's items draw the clicks: users prefer the second ranker, the sign test says so."""
    from seekrec.experiments.report import format_interleaving, interleaving_report

    rng = np.random.default_rng(1)
    served, events = [], []
    for u in range(120):
        for r in range(2):
            teams = [0, 1, 1, 0, 0, 1] if r % 2 else [1, 0, 0, 1, 1, 0]
            items = [str(i) for i in rng.choice(50, 6, replace=False) + 1]
            rid = f"{u}-{r}"
            served.append(ServedList(rid, f"u{u}", 1_800_000_000.0 + u + 300 * r, {"versus": "interleaved"},
                                     "v1+v2", items, 5.0, False, teams))
            events += [Event(f"u{u}", item, 1_800_000_001.0 + u + 300 * r, request_id=rid)
                       for item, team in zip(items, teams) if rng.random() < (0.15 if team else 0.05)]
    with open_outcome_log(tmp_path / "served.db") as log:
        log.append(served)
    with open_event_log(str(tmp_path / "events.db")) as log:
        log.append(events)
    found = interleaving_report(load_outcomes(tmp_path / "served.db", tmp_path / "events.db", window_s=60), "versus")
    assert found["users"] == 120 and found["lists"] == 240
    assert found["users_preferring_second"] > 2 * found["users_preferring_first"] and found["p_value"] < 1e-3
    assert found["delta"] > 0 and found["ci_low"] > 0 and "sign test p=" in format_interleaving(found)
    assert found["click_difference"] > 0 and found["click_ci_low"] > 0 and found["p_value_clicks"] < 1e-3
    assert "paired t-test p=" in format_interleaving(found)
    assert interleaving_report(load_outcomes(tmp_path / "served.db", tmp_path / "events.db"), "other") is None


def test_design_sample_sizes_from_an_ab_half_and_an_interleaved_half():
    from seekrec.evaluation.experiments import users_for_power
    from seekrec.experiments.attribution import Outcome
    from seekrec.experiments.report import design_sample_sizes, format_design_sample_sizes

    outcomes = []
    for u in range(8):  # A/B: control users click 1 of 10, treatment users 2 or 3 of 10
        arm = "control" if u % 2 else "treatment"
        clicks = 1 if arm == "control" else 2 + u % 3 // 2
        served = ServedList(f"ab{u}", f"u{u}", 1.0, {"ab": arm}, "v1", [str(i) for i in range(10)], 1.0, False)
        outcomes.append(Outcome(served, clicks, tuple(range(clicks)), 0.0))
    for u in range(6):  # interleaving: team B draws one more click than team A, except on a shared item
        served = ServedList(f"il{u}", f"w{u}", 1.0, {"il": "interleaved"}, "v1+v2", ["a", "b", "c", "d"], 1.0,
                            False, [0, 1, 2 + 1, 0])  # position 2: B's pick, in both top K
        positions = (1, 2) if u % 3 else (0, 1, 2)
        outcomes.append(Outcome(served, len(positions), positions, 0.0))
    found = design_sample_sizes(outcomes, "ab", "control", "treatment", "il")
    assert found["ab"]["users"] == 8 and found["interleaving"]["users"] == 6
    d = np.array([0, 1, 1, 0, 1, 1])  # per user: B's clicks - A's, the shared click left out
    assert found["interleaving"]["effect"] == pytest.approx(d.mean())
    z = d.mean() / (d.std(ddof=1) / np.sqrt(6))
    assert found["interleaving"]["z"] == pytest.approx(z)
    assert found["interleaving"]["users_needed"] == users_for_power(z, 6, 0.01, 0.8)
    assert found["ab_over_interleaving"] == found["ab"]["users_needed"] / found["interleaving"]["users_needed"]
    assert "fewer users than the A/B test" in format_design_sample_sizes(found)
