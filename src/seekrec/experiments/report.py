"""An experiment's report from its logs: per-arm tables, the metric over time with confidence bands, the
always-valid p-value, and the sample-ratio check (``seekrec experiment report``, the demo).

Everything is recomputed from the two logs the server writes (the outcome log of served lists and the event
log), so a report can be rebuilt at any time, on any machine that can read them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.evaluation.experiments import ratio_test, srm_check, users_for_power
from seekrec.evaluation.interleaving import (
    interleaving_click_test,
    interleaving_credit,
    interleaving_user_test,
    team_clicks,
)
from seekrec.experiments.attribution import EventRecord, Outcome, attribute
from seekrec.experiments.metrics import ArmMetrics, ArmTimeline, arm_metrics, compare, timeline
from seekrec.experiments.outcome_stores import open_outcome_log
from seekrec.experiments.outcomes import SHARED
from seekrec.online.factory import open_event_log

READ_PAGE = 10_000


def load_outcomes(outcome_log: str | Path, event_log: str | Path, *, window_s: float = 1800.0,
                  since: float | None = None, until: float | None = None) -> list[Outcome]:
    """The served lists of ``[since, until)`` with the events that answer them (by request id, or the user's
    latest list holding the item within ``window_s``)."""
    with open_outcome_log(outcome_log) as log:
        served = list(log.read(since_time=since, until_time=until))
    events: list[EventRecord] = []
    with open_event_log(event_log) as log:
        after = 0
        while batch := log.read(after, limit=READ_PAGE):
            events += [EventRecord.from_event(e) for e in batch if since is None or e.timestamp >= since]
            after = batch[-1].offset
    return attribute(served, events, window_s)


@dataclass(frozen=True)
class ExperimentReport:
    """What ``seekrec experiment report`` prints and plots for one layer."""

    layer: str
    control: str
    arms: dict[str, ArmMetrics]
    comparisons: dict[str, dict[str, Any]]  # treatment arm -> metric -> comparison figures
    srm: dict[str, Any] | None  # the sample-ratio check, when the expected shares are known
    timelines: dict[str, ArmTimeline]
    rollout: dict[str, Any] | None = None  # the rollout state file's content, when there is one

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``): per-arm figures, comparisons, SRM, final sequential p-values."""
        final_p = {arm: _last(t.p_value) for arm, t in self.timelines.items() if t.p_value is not None}
        return {"layer": self.layer, "control": self.control,
                "arms": {arm: _arm_row(m) for arm, m in self.arms.items()},
                "comparisons": self.comparisons, "srm": self.srm, "sequential_p": final_p, "rollout": self.rollout}


def build_report(outcomes: Sequence[Outcome], layer: str, control: str, *, catalog_size: int,
                 expected_shares: dict[str, float] | None = None, bucket_s: float = 10.0,
                 tau2: float = 1e-4, rollout: dict[str, Any] | None = None) -> ExperimentReport:
    """Per-arm metrics of ``layer``, each other arm against ``control`` (CTR by the delta method, per-user
    metrics by Welch), SRM against ``expected_shares`` (arm -> share of users), and the CTR timeline."""
    arms = arm_metrics(outcomes, layer, catalog_size)
    if control not in arms:
        raise ValueError(f"control arm {control!r} served nothing in layer {layer!r}; arms seen: {sorted(arms)}")
    comparisons = {arm: {metric: _comparison_row(compare(arms[control], m, metric))
                         for metric in ("ctr", "clicks_per_user")}
                   for arm, m in arms.items() if arm != control and m.users >= 2}
    srm = None
    if expected_shares:
        names = sorted(expected_shares)
        counts = [arms[a].users if a in arms else 0 for a in names]
        check = srm_check(counts, [expected_shares[a] for a in names])
        srm = {"arms": names, "users": counts, "expected": [expected_shares[a] for a in names],
               "p_value": check.p_value, "mismatch": check.mismatch}
    return ExperimentReport(layer, control, arms, comparisons, srm,
                            timeline(outcomes, layer, bucket_s, control=control, tau2=tau2), rollout)


def interleaving_report(outcomes: Sequence[Outcome], experiment: str,
                        confidence: float = 0.95) -> dict[str, Any] | None:
    """An interleaving experiment's verdict from its logged lists. Two tests, users as the unit
    (``evaluation.interleaving``): the standard one, where each list's clicks vote for the ranker whose
    positions got more of them, each user votes once and a sign test runs over users; and the paired t-test
    of the users' click differences on items only one ranker showed (clicks on shared items credit
    neither), which in the demo world needs several times fewer users. None when no interleaved list was
    logged."""
    lists = [o for o in outcomes if o.served.arm(experiment) is not None and o.served.teams is not None]
    if not lists:
        return None
    users = [o.served.user_id for o in lists]
    coded = [np.asarray(o.served.teams) for o in lists]  # team + SHARED where both rankers show the item
    votes = [int(interleaving_credit(t % SHARED, list(o.clicked_positions))) for t, o in zip(coded, lists)]
    index = np.unique(users, return_inverse=True)[1]
    test = interleaving_user_test(index, votes, confidence)
    found = {"experiment": experiment, "lists": len(lists), "users": len(set(users)),
             "lists_with_a_winner": int(np.count_nonzero(votes)), "users_preferring_first": test.wins_a,
             "users_preferring_second": test.wins_b, "users_tied": test.ties, "delta": test.delta,
             "ci_low": test.ci_low, "ci_high": test.ci_high, "p_value": test.p_value}
    if found["users"] >= 2:
        clicks = np.array([team_clicks(t % SHARED, list(o.clicked_positions), t >= SHARED)
                           for t, o in zip(coded, lists)]).reshape(-1, 2)  # [lists, 2]
        by_clicks = interleaving_click_test(index, clicks[:, 0], clicks[:, 1], confidence)
        found.update(click_difference=by_clicks.diff, click_ci_low=by_clicks.ci_low,
                     click_ci_high=by_clicks.ci_high, p_value_clicks=by_clicks.p_value)
    return found


def design_sample_sizes(outcomes: Sequence[Outcome], ab: str, control: str, treatment: str, interleaving: str,
                        alpha: float = 0.01, power: float = 0.8) -> dict[str, Any]:
    """Users each design would need to detect what it measured, at ``alpha`` with ``power``
    (``users_for_power``): the A/B test ``ab`` from its delta-method CTR test on per-user clicks / shown (both
    arms together), the interleaving experiment ``interleaving`` from the paired t-test of its users' click
    differences on items only one ranker showed. Two experiments of one layer on disjoint users of the same
    traffic, so the figures are comparable."""
    per_user: dict[str, dict[str, list[int]]] = {control: defaultdict(lambda: [0, 0]),
                                                 treatment: defaultdict(lambda: [0, 0])}
    diffs: dict[str, int] = defaultdict(int)
    for o in outcomes:
        arm = o.served.arm(ab)
        if arm in per_user:
            counts = per_user[arm][o.served.user_id]
            counts[0] += o.clicked
            counts[1] += o.shown
        elif o.served.arm(interleaving) is not None and o.served.teams is not None:
            coded = np.asarray(o.served.teams)
            a, b = team_clicks(coded % SHARED, list(o.clicked_positions), coded >= SHARED)
            diffs[o.served.user_id] += b - a
    out: dict[str, Any] = {"alpha": alpha, "power": power}
    arms = {arm: np.array(list(users.values()), dtype=np.float64).reshape(-1, 2) for arm, users in per_user.items()}
    if min(len(v) for v in arms.values()) >= 2:
        test = ratio_test(arms[control][:, 0], arms[control][:, 1], arms[treatment][:, 0], arms[treatment][:, 1])
        users = sum(len(v) for v in arms.values())
        out["ab"] = {"users": users, "effect": test.diff, "z": test.z, "p_value": test.p_value,
                     "users_needed": users_for_power(test.z, users, alpha, power) if test.z else None}
    d = np.array(list(diffs.values()), dtype=np.float64)
    if len(d) >= 2:
        se = float(d.std(ddof=1)) / np.sqrt(len(d))
        z = float(d.mean()) / se if se > 0 else 0.0
        out["interleaving"] = {"users": len(d), "effect": float(d.mean()), "z": z,
                               "users_needed": users_for_power(z, len(d), alpha, power) if z else None}
    needed = [out.get(k, {}).get("users_needed") for k in ("ab", "interleaving")]
    out["ab_over_interleaving"] = needed[0] / needed[1] if all(needed) else None
    return out


def format_design_sample_sizes(found: dict[str, Any]) -> str:
    """Two lines and the ratio: what each design measured and how many users it would need."""
    lines = [f"users needed for p < {found['alpha']} with {found['power']:.0%} power, from what each design measured:"]
    for key, what in (("ab", "A/B test, CTR (delta method)"),
                      ("interleaving", "interleaving, per-user click difference on items one ranker showed")):
        got = found.get(key)
        if got is None:
            lines.append(f"  {what}: too few users")
            continue
        needed = "no effect measured" if got["users_needed"] is None else f"{got['users_needed']} users"
        lines.append(f"  {what}: effect {got['effect']:+.4f}, z {got['z']:.2f} over {got['users']} users -> {needed}")
    if found["ab_over_interleaving"] is not None:
        lines.append(f"  interleaving needs {found['ab_over_interleaving']:.1f}x fewer users than the A/B test")
    return "\n".join(lines)


def format_interleaving(found: dict[str, Any]) -> str:
    """One paragraph: who the users preferred, by how much, and both tests' p-values."""
    return (f"interleaving {found['experiment']!r}: {found['lists']} lists to {found['users']} users; users preferring "
            f"the first ranker {found['users_preferring_first']}, the second {found['users_preferring_second']}, "
            f"tied {found['users_tied']}; preference for the second {found['delta']:+.3f} "
            f"[{found['ci_low']:+.3f}, {found['ci_high']:+.3f}], sign test p={found['p_value']:.3g}"
            + ("" if "p_value_clicks" not in found else
               f"; clicks per user on items only one ranker showed, second minus first "
               f"{found['click_difference']:+.3f} [{found['click_ci_low']:+.3f}, {found['click_ci_high']:+.3f}], "
               f"paired t-test p={found['p_value_clicks']:.3g}"))


def format_report(report: ExperimentReport) -> str:
    """Plain-text tables: the arms, each treatment against control, SRM, the rollout stage."""
    lines = [f"layer {report.layer!r}, control {report.control!r}", "",
             f"{'arm':<14}{'users':>8}{'lists':>9}{'CTR':>9}{'clicks/user':>13}{'coverage':>10}{'p99 ms':>9}"]
    for arm, m in report.arms.items():
        row = _arm_row(m)
        lines.append(f"{arm:<14}{row['users']:>8}{row['requests']:>9}{row['ctr']:>9.4f}{row['clicks_per_user']:>13.3f}"
                     f"{row['coverage']:>10.3f}{row['latency_p99_ms']:>9.1f}")
    for arm, by_metric in report.comparisons.items():
        p_seq = _last(report.timelines[arm].p_value) if report.timelines[arm].p_value is not None else math.nan
        for metric, c in by_metric.items():
            lines.append(f"{arm} vs {report.control} {metric}: {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
                         f"lift {c['relative_lift']:+.1%}  p={c['p_value']:.3g}"
                         + (f"  always-valid p={p_seq:.3g}" if metric == "ctr" else ""))
    if report.srm is not None:
        verdict = "MISMATCH: assignment is broken, no result can be trusted" if report.srm["mismatch"] else "ok"
        lines.append(f"sample ratio: users {dict(zip(report.srm['arms'], report.srm['users']))} against shares "
                     f"{dict(zip(report.srm['arms'], report.srm['expected']))}: p={report.srm['p_value']:.3g}, {verdict}")
    if report.rollout is not None:
        lines.append(f"rollout: stage {report.rollout.get('stage')} of {report.rollout.get('steps')}, "
                     f"{report.rollout.get('status')}")
        history = report.rollout.get("history") or []
        start = history[0]["at"] if history else 0.0
        for step in history:
            lines.append(f"  +{step['at'] - start:6.1f} s  {step['action']:<18} stage {step['from_stage']} -> "
                         f"{step['to_stage']}  ({'; '.join(step['reasons'])})")
    return "\n".join(lines)


def plot_report(report: ExperimentReport, out: str | Path) -> Path:
    """PNG: cumulative CTR per arm with its 95% band; each treatment's difference with its always-valid
    confidence sequence; the always-valid p-value over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    start = min(float(t.times[0]) for t in report.timelines.values())
    for arm, t in report.timelines.items():
        minutes = (t.times - start) / 60
        axes[0].plot(minutes, t.ctr, label=arm)
        axes[0].fill_between(minutes, t.ctr_low, t.ctr_high, alpha=0.2)
        if t.diff is not None:
            axes[1].plot(minutes, t.diff, label=f"{arm} - {report.control}")
            axes[1].fill_between(minutes, t.diff_low, t.diff_high, alpha=0.2)
            axes[2].plot(minutes, t.p_value, label=arm)
    axes[0].set(title="cumulative CTR (95% band)", xlabel="minutes", ylabel="CTR")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(title="CTR difference (always-valid 95% sequence)", xlabel="minutes")
    axes[2].axhline(0.05, color="tab:red", lw=0.8, ls="--")
    axes[2].set(title="always-valid p-value", xlabel="minutes", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"experiment layer {report.layer!r}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _arm_row(m: ArmMetrics) -> dict[str, Any]:
    return {"users": int(m.users), "requests": int(m.n_requests), "ctr": float(m.ctr),
            "clicks_per_user": float(m.clicks_per_user), "value_per_user": float(m.value_per_user),
            "coverage": float(m.coverage), "novelty": m.novelty, "latency_p50_ms": float(m.latency_p50_ms),
            "latency_p99_ms": float(m.latency_p99_ms)}


def _comparison_row(c: Any) -> dict[str, float]:
    return {"control": c.control, "treatment": c.treatment, "diff": c.diff, "ci_low": c.ci_low,
            "ci_high": c.ci_high, "relative_lift": c.relative_lift, "p_value": c.p_value,
            "users": [c.n_control, c.n_treatment]}


def _last(values: Iterable[float] | None) -> float:
    finite = [float(v) for v in (values if values is not None else []) if np.isfinite(v)]
    return finite[-1] if finite else math.nan
