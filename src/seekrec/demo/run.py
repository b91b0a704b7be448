"""Orchestrate the demo: every stage of the real-time loop, on embedded defaults, in one command.

The server and the online trainer run as their own processes (as in production, so they do not
share a GIL with the simulated users); the simulated users run here and speak HTTP to the server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.data.simulator import Simulator, SimulatorConfig
from seekrec.demo.traffic import (
    TrafficStats,
    freshness_seconds,
    percentiles,
    run_traffic,
)
from seekrec.evaluation.abtest import welch_test
from seekrec.experiments.attribution import Outcome
from seekrec.experiments.outcome_stores import outcome_log_beside
from seekrec.experiments.report import (
    ExperimentReport,
    design_sample_sizes,
    format_design_sample_sizes,
    format_interleaving,
    interleaving_report,
    load_outcomes,
    plot_report,
)
from seekrec.experiments.report import build_report as build_experiment_report
from seekrec.experiments.report import format_report as format_report_of_experiment
from seekrec.experiments.rollout_store import RolloutStore
from seekrec.io import atomic_write_json
from seekrec.online.factory import open_event_log
from seekrec.online.trainer import METRICS_FILE
from seekrec.registry import ModelRegistry
from seekrec.serving.auth import ENV_VAR as API_KEYS_ENV
from seekrec.serving.process import free_port, start_logged, wait_ready
from seekrec.training.experiment import ExperimentConfig, train_experiment
from seekrec.training.metrics_log import MetricsLog

log = logging.getLogger(__name__)
FROZEN, REALTIME = "frozen", "realtime"
GREEDY, EXPLORE = "greedy", "explore"  # the arms of --explore-test
VERSUS = "versus"  # --compare-designs: the interleaving experiment beside the A/B test
LEARNERS = ("shared", "per-arm")
DEMO_EXPERIMENT, EXPERIMENT_PNG = "demo", "experiment.png"
SERVER_LOG, TRAINER_LOG, TRAINER_STATE = "server.log", "online-trainer.log", "online"  # under the workdir
EXPERIMENTS_FILE = "experiments.toml"  # under the workdir: --rollout's or --explore-test's definitions


@dataclass
class DemoConfig:
    """Sizes and durations; each field's ``help`` is also its ``seekrec demo`` flag's help."""

    workdir: Path = field(default_factory=lambda: Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
                          metadata={"help": "where data, registry, logs and report go (default: runs/demo-<time>)"})
    quick: bool = field(default=False, metadata={"help": "small world, short live phase (under 3 minutes)"})
    seed: int = 0
    live_seconds: float | None = field(default=None, metadata={
        "help": "length of the live phase (none: 75 s quick, 240 s full)"})
    workers: int = field(default=4, metadata={"help": "concurrent simulated-user loops"})
    rollout: bool = field(default=False, metadata={
        "help": "roll the real-time model out in 10 steps (10%, 20%, ... of users) against the frozen one, each "
                "step taken by the server's controller while the guardrails hold, instead of a 50/50 A/B test"})
    explore_test: str | None = field(default=None, metadata={
        "help": "instead of frozen vs real-time: an A/B test of greedy vs Thompson-sampling exploration, both arms "
                "served by online learners, 'shared' (one learner on every user's events) or 'per-arm' (a learner "
                "per arm on its own users' events, publishing to its own registry channel; docs/experiments.md)"})
    compare_designs: bool = field(default=False, metadata={
        "help": "give half of the users the 50/50 A/B test and the other half team-draft interleaving of the same "
                "two models, and report how many users each design needs to reach p < 0.01 with 80% power"})
    event_log: str | None = field(default=None, metadata={
        "help": "event log url the server and the online trainer share (none: SQLite in the workdir, the embedded "
                "default; redis://host:port/db runs the loop on Redis Streams)"})
    keep_serving: bool = field(default=False, metadata={
        "help": "leave the server, trainer and console up after the report until Ctrl-C"})

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.explore_test is not None and self.explore_test not in LEARNERS:
            raise ValueError(f"explore_test must be one of {LEARNERS} (or unset), got {self.explore_test!r}")
        if sum([self.explore_test is not None, self.rollout, self.compare_designs]) > 1:
            raise ValueError("--rollout, --explore-test and --compare-designs are different experiments: choose one")
        if self.workers < 1 or (self.live_seconds is not None and self.live_seconds <= 0):
            raise ValueError(f"demo needs workers >= 1 and live_seconds > 0, got workers={self.workers}, "
                             f"live_seconds={self.live_seconds}")

    @property
    def arms(self) -> tuple[str, str]:
        """(control, treatment) of the demo's experiment."""
        return (GREEDY, EXPLORE) if self.explore_test else (FROZEN, REALTIME)

    def sizes(self) -> dict[str, Any]:
        if self.quick:
            return {"n_users": 400, "n_items": 300, "events": 30, "epochs": 8, "live": 75.0, "new_items": 60}
        return {"n_users": 2000, "n_items": 1000, "events": 40, "epochs": 12, "live": 240.0, "new_items": 200}


def _start(cmd: list[str], logfile: Path, stack: ExitStack) -> subprocess.Popen:
    """A child process of the demo; the demo's own users send no API key, so keys exported for a real server
    must not lock them out."""
    return start_logged(cmd, logfile, stack, env={k: v for k, v in os.environ.items() if k != API_KEYS_ENV})


def prepare(cfg: DemoConfig) -> tuple[Simulator, Path, str, ModelRegistry]:
    """Simulate data, train the initial model, publish it as the first registry version."""
    size = cfg.sizes()
    # tastes and the population-wide trend drift fast in live time (a day every 3 s) and new items
    # come out every second, so a model frozen at the start goes stale within the demo
    sim = Simulator(SimulatorConfig(n_users=size["n_users"], n_items=size["n_items"],
                                    mean_events_per_user=size["events"], live_time_scale=28_800.0,
                                    trend_weight=2.0, trend_drift_per_day=0.3, live_new_items=size["new_items"],
                                    release_every_seconds=1.0, new_item_bias=-1.5, seed=cfg.seed))
    data_dir = cfg.workdir / "data"
    sim.generate().write(data_dir)
    overrides = ["name=demo-initial", "model.name=sasrec", "model.dim=32", "model.n_layers=2", "data.max_len=30",
                 "data.stride=15", "train.lr=0.003", f"train.max_epochs={size['epochs']}", "train.eval_every=2",
                 "train.warmup_steps=10", f"train.seed={cfg.seed}"]
    train_experiment(ExperimentConfig.load(None, overrides), data_dir, cfg.workdir / "runs" / "initial")
    registry = ModelRegistry(cfg.workdir / "registry")
    version = registry.publish_run(cfg.workdir / "runs" / "initial")
    registry.pin(version, "A/B control arm of the demo")  # online publishing must not retire it
    return sim, data_dir, version, registry


ROLLOUT = """# written by seekrec demo --rollout: the real-time model replaces the frozen one in 10 steps
[[layers]]
name = "model"

[[layers.experiments]]
name = "{name}"
control = "{frozen}"
arms = [{{ name = "{frozen}", version = "{version}" }}, {{ name = "{realtime}", version = "current" }}]
guardrails = [{{ metric = "ctr", max_relative_drop = 0.10, min_users = 20 }},
              {{ metric = "latency_p99_ms", max = 250.0, min_users = 20 }}]

[layers.experiments.rollout]
steps = 10
min_users_per_step = 20
min_seconds_per_step = {step_seconds}
alpha = 0.05
"""


def write_rollout(cfg: DemoConfig, frozen_version: str, duration: float) -> Path:
    """The experiments file of ``--rollout``: each of the 10 steps lasts at least ~1/12 of the live phase, so the
    rollout can complete in it when the guardrails hold."""
    path = cfg.workdir / EXPERIMENTS_FILE
    path.write_text(ROLLOUT.format(name=DEMO_EXPERIMENT, frozen=FROZEN, realtime=REALTIME, version=frozen_version,
                                   step_seconds=round(duration / 12, 1)))
    return path


EXPLORE_TEST = """# written by seekrec demo --explore-test: greedy vs Thompson-sampling exploration, both on online learners
[[layers]]
name = "model"

[[layers.experiments]]
name = "{name}"
control = "{greedy}"
arms = [{{ name = "{greedy}", share = 0.5, version = "{greedy_version}" }},
        {{ name = "{explore}", share = 0.5, version = "{explore_version}", params = {{ explore_method = "thompson", explore_seed = {seed} }} }}]
"""


def write_explore_test(cfg: DemoConfig) -> Path:
    """The experiments file of ``--explore-test``: per-arm learners serve their channels, a shared one CURRENT."""
    path = cfg.workdir / EXPERIMENTS_FILE
    per_arm = cfg.explore_test == "per-arm"
    path.write_text(EXPLORE_TEST.format(
        name=DEMO_EXPERIMENT, greedy=GREEDY, explore=EXPLORE, seed=cfg.seed,
        greedy_version=f"channel:{GREEDY}" if per_arm else "current",
        explore_version=f"channel:{EXPLORE}" if per_arm else "current"))
    return path


DESIGNS = """# written by seekrec demo --compare-designs: one half of the users in the A/B test, the other interleaved
[[layers]]
name = "model"

[[layers.experiments]]
name = "{name}"
buckets = [0, 5000]
control = "{frozen}"
arms = [{{ name = "{frozen}", share = 0.5, version = "{version}" }}, {{ name = "{realtime}", share = 0.5, version = "current" }}]

[[layers.experiments]]
name = "{versus}"
buckets = [5000, 10000]
interleave = true
arms = [{{ name = "{frozen}-il", version = "{version}" }}, {{ name = "{realtime}-il", version = "current" }}]
"""


def write_designs(cfg: DemoConfig, frozen_version: str) -> Path:
    """The experiments file of ``--compare-designs``: the A/B test and interleaving on disjoint halves of a layer."""
    path = cfg.workdir / EXPERIMENTS_FILE
    path.write_text(DESIGNS.format(name=DEMO_EXPERIMENT, versus=VERSUS, frozen=FROZEN, realtime=REALTIME,
                                   version=frozen_version))
    return path


def learners(cfg: DemoConfig) -> dict[str, list[str]]:
    """State dir name -> extra ``stream-train`` flags of each online learner the demo runs."""
    if cfg.explore_test != "per-arm":
        return {TRAINER_STATE: []}
    experiments = cfg.workdir / EXPERIMENTS_FILE
    return {f"{TRAINER_STATE}-{arm}": ["--channel", arm, "--consumer", f"learner-{arm}", "--experiments",
                                       str(experiments), "--arm", f"{DEMO_EXPERIMENT}={arm}"] for arm in cfg.arms}


def event_log_url(cfg: DemoConfig) -> str:
    """The event log the server and the online trainer share (SQLite in the workdir unless given)."""
    return cfg.event_log or f"sqlite:///{(cfg.workdir / 'events.db').resolve()}"


def live_phase(
    cfg: DemoConfig, sim: Simulator, data_dir: Path, frozen_version: str, registry: ModelRegistry,
    show: Callable[[str], None], stack: ExitStack,
) -> tuple[TrafficStats, float]:
    """Server + online trainer + simulated users for ``live`` seconds; prints a live table. The processes stop
    when ``stack`` closes, so the caller decides how long they outlive the traffic (``keep_serving``)."""
    duration = cfg.live_seconds or cfg.sizes()["live"]
    events_url = event_log_url(cfg)
    with closing(open_event_log(events_url)) as events:
        if events.end_offset():  # an earlier run's events would be replayed as this world's live traffic
            raise ValueError(f"the event log {events_url} already holds {events.end_offset()} events; the demo "
                             "needs an empty one (for Redis, name a fresh stream with ?stream=<key>)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "seekrec.cli"]
    experiments = (write_rollout(cfg, frozen_version, duration) if cfg.rollout
                   else write_explore_test(cfg) if cfg.explore_test
                   else write_designs(cfg, frozen_version) if cfg.compare_designs else None)
    control, treatment = cfg.arms
    trainers = [_start([*cli, "stream-train", "--registry", str(registry.root), "--event-log", events_url,
                        "--data", str(data_dir), "--state", str(cfg.workdir / state),
                        "--publish-every-seconds", "1.0", "--publish-every-events", "500", "--lr", "3e-3",
                        "--threads", "1", *flags], cfg.workdir / trainer_log(state), stack)
                for state, flags in learners(cfg).items()]
    if cfg.rollout:
        arms = ["--experiments", str(experiments), "--rollout-interval-s", "1.0"]
    elif cfg.explore_test or cfg.compare_designs:
        arms = ["--experiments", str(experiments)]
    else:
        arms = ["--experiment", DEMO_EXPERIMENT, "--arm", f"{FROZEN}={frozen_version}:0.5",
                "--arm", f"{REALTIME}=current:0.5"]
    server = _start([*cli, "serve", "--registry", str(registry.root), "--event-log", events_url,
                     "--data", str(data_dir), "--port", str(port), "--poll-interval", "0.5", *arms],
                    cfg.workdir / SERVER_LOG, stack)
    wait_ready(base, server, cfg.workdir / SERVER_LOG)
    show(f"web console: {base}/ui (Try it, Live, Models; docs/console.md)")
    stats, stop = TrafficStats(), threading.Event()
    start = time.time()
    driver = threading.Thread(target=run_traffic, args=(base, sim), daemon=True, kwargs={
        "duration_s": duration, "workers": cfg.workers, "seed": cfg.seed, "stats": stats, "stop": stop,
        "browse_share": 0.2})
    driver.start()
    show(f"{'time':>5}  {'requests':>8}  {'QPS':>6}  {'CTR ' + control:>10}  {'CTR ' + treatment:>12}  "
         f"{'serving':>8}  {'p99 ms':>7}  errors")
    try:
        while driver.is_alive():
            driver.join(timeout=5.0)
            for state, trainer in zip(learners(cfg), trainers):
                if trainer.poll() is not None:
                    raise RuntimeError(f"the online trainer exited; see {cfg.workdir / trainer_log(state)}")
            elapsed = time.time() - start
            with stats.lock:
                ctr = {arm: float(np.mean(v)) if v else float("nan") for arm, v in stats.ctr.items()}
                p99 = percentiles(stats.latencies_ms[-2000:])["p99"]
                line = (f"{elapsed:5.0f}  {stats.requests:8d}  {stats.requests / elapsed:6.1f}  "
                        f"{ctr.get(control, float('nan')):10.4f}  {ctr.get(treatment, float('nan')):12.4f}  "
                        f"{max(stats.version_first_seen, default='-'):>8}  {p99:7.1f}  {stats.errors}")
            show(line)
    finally:
        stop.set()
        driver.join()
    return stats, time.time() - start


def trainer_log(state: str) -> str:
    """The log file of the online learner whose state dir is ``state``."""
    return TRAINER_LOG if state == TRAINER_STATE else f"{state}.log"


def published_offsets(metrics_files: list[Path]) -> dict[str, int]:
    """Version -> event-log offset it was trained through, from the online learners' own logs
    (registry retention may already have deleted older versions)."""
    return {r["version"]: int(r["offset"]) for path in metrics_files for r in MetricsLog(path).read()
            if r.get("kind") == "publish"}


def build_report(stats: TrafficStats, seconds: float, offsets: dict[str, int],
                 arms: tuple[str, str] = (FROZEN, REALTIME)) -> dict[str, Any]:
    """CTR per arm with Welch's test, freshness from event to served model, latency and QPS."""
    ab = welch_test(np.asarray(stats.ctr[arms[0]]), np.asarray(stats.ctr[arms[1]]))
    served = [(t, offsets.get(v, 0)) for v, t in stats.version_first_seen.items()]
    fresh = freshness_seconds(stats.acked, served)
    return {
        "ab_test": {**asdict(ab), "arm_a": arms[0], "arm_b": arms[1]},
        "freshness_seconds": {**percentiles(fresh), "events_measured": int(fresh.size),
                              "events_acknowledged": len(stats.acked)},
        "recommend_latency_ms": percentiles(stats.latencies_ms),
        "qps": stats.requests / seconds,
        "requests": stats.requests,
        "errors": stats.errors,
        "fallbacks": stats.fallbacks,
        "released_items_shown_share": {arm: released / max(total, 1) for arm, (total, released) in stats.shown.items()},
        "versions_published": len(offsets),
        "seconds": seconds,
    }


TITLES = {FROZEN: "frozen initial model vs real-time model", GREEDY: "greedy vs Thompson-sampling exploration"}
LEARNER_TITLES = {"shared": ", one online learner for both arms", "per-arm": ", an online learner per arm"}


def format_report(report: dict[str, Any]) -> str:
    ab, fresh, lat = report["ab_test"], report["freshness_seconds"], report["recommend_latency_ms"]
    width = max(len(ab["arm_a"]), len(ab["arm_b"])) + 4
    return "\n".join([
        f"A/B test: {TITLES[ab['arm_a']]}{LEARNER_TITLES.get(report.get('learners', ''), '')} "
        "(per-request CTR of a 10-item slate)",
        f"  {'CTR ' + ab['arm_a']:<{width}}  {ab['mean_a']:.4f}  (n={ab['n_a']})",
        f"  {'CTR ' + ab['arm_b']:<{width}}  {ab['mean_b']:.4f}  (n={ab['n_b']})",
        f"  difference    {ab['diff']:+.4f}  95% CI [{ab['ci_low']:+.4f}, {ab['ci_high']:+.4f}]  "
        f"lift {ab['relative_lift']:+.1%}",
        f"  Welch's t-test: t = {ab['t']:.2f}, p = {ab['p_value']:.3g}",
        "  share of shown items released during the demo: "
        + ", ".join(f"{arm} {share:.1%}" for arm, share in sorted(report["released_items_shown_share"].items())),
        f"freshness (event -> served model trained on it): p50 {fresh['p50']:.2f} s, p99 {fresh['p99']:.2f} s "
        f"({fresh['events_measured']} of {fresh['events_acknowledged']} events)",
        f"/recommend latency: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms at {report['qps']:.0f} QPS "
        f"({report['requests']} requests, {report['errors']} errors)",
        f"model versions published: {report['versions_published']}",
    ])


def experiment_report(cfg: DemoConfig, outcomes: list[Outcome], n_items: int) -> ExperimentReport:
    """The A/B experiment rebuilt from the server's outcome log and the event log: per-user CTR by the delta
    method, the always-valid p-value, the 50/50 sample-ratio check (A/B) or the rollout's stages (``--rollout``);
    plots in ``workdir/experiment.png``."""
    rollout = None
    if cfg.rollout:
        state = RolloutStore(cfg.workdir / "registry" / "rollouts").read(DEMO_EXPERIMENT)
        rollout = None if state is None else state.to_json()
    control, treatment = cfg.arms
    experiment = build_experiment_report(outcomes, DEMO_EXPERIMENT, control, catalog_size=n_items,
                                         expected_shares=None if cfg.rollout else {control: 0.5, treatment: 0.5},
                                         bucket_s=5.0, rollout=rollout)
    plot_report(experiment, cfg.workdir / EXPERIMENT_PNG)
    return experiment


def run_demo(cfg: DemoConfig, show: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole loop; writes ``workdir/report.json`` and returns the report."""
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    show(f"[1/3] simulating users and training the initial model in {cfg.workdir} ...")
    sim, data_dir, version, registry = prepare(cfg)
    show(f"[2/3] initial model {version} published; starting server, online trainer and simulated users")
    with ExitStack() as stack:
        stats, seconds = live_phase(cfg, sim, data_dir, version, registry, show, stack)
        if not cfg.keep_serving:
            stack.close()  # stopping the server flushes its outcome log, so the report counts every served list
        report = _report(cfg, stats, seconds, sim, started, show)
        if cfg.keep_serving:
            _serve_until_interrupted(show)
    return report


def _serve_until_interrupted(show: Callable[[str], None]) -> None:
    """``keep_serving``: the server, trainer and console stay up (without simulated users) until Ctrl-C."""
    show("the server, online trainer and console stay up (--keep-serving); Ctrl-C stops them")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        show("stopping")


def _report(cfg: DemoConfig, stats: TrafficStats, seconds: float, sim: Simulator, started: float,
            show: Callable[[str], None]) -> dict[str, Any]:
    """Build, write and print the report of the live phase. With ``keep_serving`` the server still runs, and a
    served list its outcome writer has not flushed yet (the last fraction of a second) is not counted."""
    states = learners(cfg)
    report = build_report(stats, seconds, published_offsets([cfg.workdir / s / METRICS_FILE for s in states]),
                          cfg.arms)
    if cfg.explore_test:
        report["learners"] = cfg.explore_test
    events_url = event_log_url(cfg)
    outcomes = load_outcomes(outcome_log_beside(events_url), events_url, window_s=60.0, since=started)
    experiment = experiment_report(cfg, outcomes, n_items=sim.config.n_items)
    report["experiment"] = experiment.to_dict()
    if cfg.compare_designs:
        report["interleaving"] = interleaving_report(outcomes, VERSUS)
        report["designs"] = design_sample_sizes(outcomes, DEMO_EXPERIMENT, FROZEN, REALTIME, VERSUS)
    report["total_seconds"] = time.time() - started
    atomic_write_json(cfg.workdir / "report.json", report)
    show("[3/3] report\n" + format_report(report))
    show("experiment report from the server's logs (users as the unit; docs/experiments.md)\n"
         + format_report_of_experiment(experiment) + f"\nplots: {cfg.workdir / EXPERIMENT_PNG}")
    if cfg.compare_designs:
        if report["interleaving"] is not None:
            show(format_interleaving(report["interleaving"]))
        show(format_design_sample_sizes(report["designs"]))
    logs = ", ".join([SERVER_LOG, *(trainer_log(s) for s in states)])
    show(f"wrote {cfg.workdir / 'report.json'} (logs: {logs})")
    return report

