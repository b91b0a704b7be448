"""Per-arm online learners vs one shared learner: how much of a treatment leaks into the control of an A/B test.

    python benchmarks/arm_learners.py --rounds 40 --round-seconds 1.25 --k 10 --top-n 50 --browse-share 0.2 \
        --seeds 0 1 2 --out benchmarks/results/arm_learners.json --plot docs/arm_learners.png   # the defaults

The world is the demo's quick one (``seekrec demo --quick``: 400 users, 300 items, tastes and trend drifting a
day every 3 s of live time, new items released every second) and the model the demo's SASRec
(``seekrec.demo.run.prepare``). The treatment is **explore**: Thompson-sampling re-ranking of the model's top
``top_n`` (``seekrec.serving.explore``, the server's ``explore_*`` arm params); the control is **greedy**: the
model's top K. Both arms are served by online learners (``OnlineTrainer``, the demo's settings), so what an arm
shows decides what its learner learns. Four worlds are played from the same start, each with its own copy of the
simulator, the users' histories, the registry and an SQLite event log; the clicks of every (user, round) draw from
the same random stream in all of them:

* **greedy 100%** and **explore 100%**: every user gets one policy, one learner learns from all of them. Their
  difference is the effect the treatment would have once shipped (the global treatment effect).
* **A/B, shared learner**: users split 50/50 by the layered assignment (``Assigner``); one learner learns from
  every user's events and both arms serve its CURRENT, as when every arm's events go to the one log one
  ``seekrec stream-train`` reads.
* **A/B, per-arm learners**: the same split; two learners read the one shared log, each through its arm's
  ``ArmTraffic`` filter, and publish to their own registry channels (``channel:greedy``, ``channel:explore``):
  ``seekrec stream-train --experiments FILE --arm explore-test=ARM --channel ARM``.

Every round (``round_seconds`` of live time) every user asks for a slate of K; with probability ``browse_share``
they also find an item on their own (``Simulator.browse``; how released items reach the log). After the round its
events are appended to the world's log and every learner drains it and publishes a version, which serves the next
round.

Reported per world and arm: expected CTR (the simulator's click probabilities of the shown slate times the
examination of each position: no click noise) and observed CTR; per A/B world the relative lift of explore over
greedy with the delta-method 95% CI on clicks / shown per user (``ratio_test``), next to the global effect of the
100% worlds (expected CTR, so without click noise). The leak is the shared A/B's lift minus the global effect;
the per-arm design should sit closer to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.exploration import initial_histories
from seekrec.data.simulator import Simulator
from seekrec.demo.run import DemoConfig, prepare
from seekrec.evaluation.experiments import ratio_test
from seekrec.experiments.arm_traffic import ArmTraffic
from seekrec.experiments.assignment import Assigner
from seekrec.experiments.definition import ExperimentsConfig
from seekrec.io import atomic_write_json
from seekrec.online.event_log import Event
from seekrec.online.factory import open_event_log
from seekrec.online.trainer import OnlineTrainer, OnlineTrainerConfig
from seekrec.registry import ModelRegistry
from seekrec.serving.explore import ClickAttribution, Explorer, ExploreSettings, FeedbackCounts
from seekrec.serving.predictor import Query
from seekrec.serving.sequence_predictor import SequencePredictor

log = logging.getLogger("benchmarks.arm_learners")
HISTORY_LEN = 200  # the server's default history_len: the seen filter's reach
ARMS = ("greedy", "explore")
EXPERIMENT = "explore-test"
WORLDS = ("greedy 100%", "explore 100%", "A/B, shared learner", "A/B, per-arm learners")
DEFINITION = """[[layers]]
name = "model"
[[layers.experiments]]
name = "explore-test"
control = "greedy"
arms = [{ name = "greedy", share = 0.5, version = "channel:greedy" },
        { name = "explore", share = 0.5, version = "channel:explore", params = { explore_method = "thompson" } }]
"""


@dataclass(frozen=True)
class Protocol:
    rounds: int = 40
    round_seconds: float = 1.25
    k: int = 10
    top_n: int = 50
    browse_share: float = 0.2


class Learner:
    """One ``OnlineTrainer`` over a world's log (optionally one arm's traffic, publishing to a channel) and the
    predictor of the version it last published."""

    def __init__(self, registry: ModelRegistry, data_dir: Path, url: str, state: Path, seed: int,
                 traffic: ArmTraffic | None = None) -> None:
        self.registry, self.channel = registry, None if traffic is None else traffic.arm
        config = OnlineTrainerConfig(registry=registry.root, event_log=url, dataset=data_dir, state_dir=state,
                                     consumer=f"learner-{self.channel or 'all'}", channel=self.channel, lr=3e-3,
                                     publish_every_events=10**9, publish_every_seconds=1e9, block_ms=0,
                                     stop_when_idle=True, seed=seed, registry_keep=4)
        self.trainer = OnlineTrainer(config, traffic)
        self.version = ""
        self.refresh()

    def refresh(self) -> None:
        version = self.trainer.state["published_version"]
        if version != self.version:
            self.version = version
            self.predictor = SequencePredictor.from_registry(self.registry, version)

    def learn(self) -> None:
        self.trainer.run()  # drains the log, then publishes what is new
        self.refresh()

    def close(self) -> None:
        self.trainer.close()


@dataclass
class WorldRun:
    """Per-user sums of one world: clicks, shown items and expected clicks [U + 1] (row 0 unused)."""

    arm: np.ndarray
    clicks: np.ndarray
    shown: np.ndarray
    expected: np.ndarray
    examples: dict[str, int] = field(default_factory=dict)


def play_world(name: str, sim: Simulator, histories: dict[int, list[int]], base: Path, data_dir: Path,
               work: Path, proto: Protocol, seed: int) -> WorldRun:
    """One world from the common start (see the module docstring)."""
    shutil.copytree(base, work / "registry")
    registry = ModelRegistry(work / "registry")
    url = f"sqlite:///{(work / 'events.db').resolve()}"
    definition_path = work / "experiments.toml"
    definition_path.write_text(DEFINITION)
    config = ExperimentsConfig.load(definition_path)
    n = sim.config.n_users
    users = list(range(1, n + 1))
    if name == "greedy 100%":
        arm = np.zeros(n + 1, dtype=np.int64)
    elif name == "explore 100%":
        arm = np.ones(n + 1, dtype=np.int64)
    else:
        assigner = Assigner(config)
        arm = np.array([0] + [ARMS.index(assigner.assign(str(u)).arms[EXPERIMENT]) for u in users])
    if name == "A/B, per-arm learners":
        learners = [Learner(registry, data_dir, url, work / f"state-{a}", seed, ArmTraffic(config, EXPERIMENT, a))
                    for a in ARMS]
    else:
        shared = Learner(registry, data_dir, url, work / "state", seed)
        learners = [shared, shared]
    events = open_event_log(url)
    settings = ExploreSettings(method="thompson", top_n=proto.top_n, seed=seed)
    attribution = ClickAttribution(FeedbackCounts(sim.config.n_items + sim.config.live_new_items), max_users=n)
    explorer = Explorer(settings, attribution.counts)
    examined = (1.0 + np.arange(proto.k)) ** -sim.config.position_bias  # [K] the simulator's examination
    out = WorldRun(arm, *(np.zeros(n + 1) for _ in range(3)))
    hist = {u: list(h) for u, h in histories.items()}
    world = Simulator(sim.config)
    try:
        for r in range(proto.rounds):
            t = world.history_end + (r + 1) * proto.round_seconds
            rows: list[Event] = []
            for a in (0, 1):
                members = [u for u in users if arm[u] == a]
                predictor = learners[a].predictor
                wanted = explorer.candidates_needed(proto.k) if a == 1 else proto.k
                queries = [Query(str(u), tuple(predictor.catalog.items.encode(hist[u]).tolist()), wanted)
                           for u in members]
                for user, rec in zip(members, predictor.recommend(queries)):
                    ids = np.asarray([int(raw) for raw in rec.item_ids], dtype=np.int64)
                    if a == 1:
                        slate = explorer.rerank(ids, rec.scores, proto.k, explorer.request_rng(str(user), r)).item_ids
                        attribution.served(str(user), slate)
                    else:
                        slate = ids[: proto.k]
                    out.expected[user] += float(world.click_probabilities(user, slate, t) @ examined[: len(slate)])
                    clicks = world.respond(user, slate, t, rng=np.random.default_rng([seed, 1, user, r]))
                    out.clicks[user] += clicks.sum()
                    out.shown[user] += proto.k
                    for item in slate[clicks].tolist():
                        if a == 1:
                            attribution.event(str(user), item)
                        rows.append(Event(str(user), str(item), float(t)))
                    hist[user] = (hist[user] + slate[clicks].tolist())[-HISTORY_LEN:]
                    if np.random.default_rng([seed, 4, user, r]).random() < proto.browse_share:
                        found = world.browse(user, t, rng=np.random.default_rng([seed, 5, user, r]))
                        hist[user] = (hist[user] + [found])[-HISTORY_LEN:]
                        rows.append(Event(str(user), str(found), float(t)))
            rows.sort(key=lambda e: e.user_id)  # the same order in every world
            events.append(rows)
            for learner in {id(x): x for x in learners}.values():
                learner.learn()
        for a, learner in zip(ARMS, learners):
            out.examples[a] = learner.trainer.summary()["steps"]
    finally:
        events.close()
        for learner in {id(x): x for x in learners}.values():
            learner.close()
    return out


def lift(run: WorldRun, greedy_all: WorldRun, explore_all: WorldRun) -> dict[str, Any]:
    """Explore over greedy in one A/B world, observed (delta method, users as the unit) and expected, next to the
    truth for the same two groups of users: the explore arm's users in the explore-100% world over the greedy
    arm's users in the greedy-100% world (the arms' users differ, so only the same users make a fair truth)."""
    g, e = (np.flatnonzero(run.arm[1:] == a) + 1 for a in (0, 1))
    test = ratio_test(run.clicks[g], run.shown[g], run.clicks[e], run.shown[e])

    def ectr(world: WorldRun, users: np.ndarray) -> float:
        return float(world.expected[users].sum() / world.shown[users].sum())

    expected = ectr(run, e) / ectr(run, g) - 1
    truth = ectr(explore_all, e) / ectr(greedy_all, g) - 1
    return {"users": {"greedy": int(len(g)), "explore": int(len(e))},
            "ctr": {"greedy": test.ratio_a, "explore": test.ratio_b},
            "expected_ctr": {"greedy": ectr(run, g), "explore": ectr(run, e)},
            "observed_lift": test.relative_lift, "observed_lift_ci95": [test.ci_low / test.ratio_a,
                                                                       test.ci_high / test.ratio_a],
            "p_value": test.p_value, "expected_lift": expected, "true_lift_same_users": truth,
            "bias": expected - truth,
            "control_shift": ectr(run, g) / ectr(greedy_all, g) - 1,
            "treatment_shift": ectr(run, e) / ectr(explore_all, e) - 1}


def run_seed(proto: Protocol, seed: int, work: Path) -> dict[str, Any]:
    start = time.perf_counter()
    sim, data_dir, version, registry = prepare(DemoConfig(workdir=work / "prepare", quick=True, seed=seed))
    histories = {u: h[-HISTORY_LEN:] for u, h in initial_histories(sim).items()}
    runs, seconds = {}, {"prepare": time.perf_counter() - start}
    for i, name in enumerate(WORLDS):
        begin = time.perf_counter()
        runs[name] = play_world(name, sim, histories, registry.root, data_dir, work / f"world{i}", proto, seed)
        seconds[name] = time.perf_counter() - begin
        log.info("seed %d, %s: CTR %.4f, expected %.4f (%.0f s)", seed, name,
                 runs[name].clicks[1:].sum() / runs[name].shown[1:].sum(),
                 runs[name].expected[1:].sum() / runs[name].shown[1:].sum(), seconds[name])
    whole = {name: {"ctr": float(runs[name].clicks[1:].sum() / runs[name].shown[1:].sum()),
                    "expected_ctr": float(runs[name].expected[1:].sum() / runs[name].shown[1:].sum())}
             for name in WORLDS[:2]}
    global_effect = whole["explore 100%"]["expected_ctr"] / whole["greedy 100%"]["expected_ctr"] - 1
    global_observed = whole["explore 100%"]["ctr"] / whole["greedy 100%"]["ctr"] - 1
    ab = {name: lift(runs[name], runs[WORLDS[0]], runs[WORLDS[1]]) for name in WORLDS[2:]}
    for name in WORLDS[2:]:
        ab[name]["learner_steps"] = runs[name].examples
    return {"base_version": version, "whole_worlds": whole, "global_effect": global_effect,
            "global_effect_observed": global_observed, "ab": ab,
            "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - start}.items()}}


def summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    return {"global_effect": mean([r["global_effect"] for r in runs.values()]),
            **{name: {"expected_lift": mean([r["ab"][name]["expected_lift"] for r in runs.values()]),
                      "observed_lift": mean([r["ab"][name]["observed_lift"] for r in runs.values()]),
                      **{key: mean([r["ab"][name][key] for r in runs.values()])
                         for key in ("true_lift_same_users", "bias", "control_shift", "treatment_shift")}}
               for name in WORLDS[2:]}}


def plot(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(record["runs"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(seeds))
    bars = [("truth (same users, 100% worlds)", lambda r: r["ab"]["A/B, shared learner"]["true_lift_same_users"]),
            ("A/B, shared learner", lambda r: r["ab"]["A/B, shared learner"]["expected_lift"]),
            ("A/B, per-arm learners", lambda r: r["ab"]["A/B, per-arm learners"]["expected_lift"])]
    for i, (label, get) in enumerate(bars):
        ax.bar(x + (i - 1) * 0.27, [100 * get(record["runs"][s]) for s in seeds], width=0.27, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"seed {s}" for s in seeds])
    ax.set_ylabel("explore vs greedy, expected CTR lift (%)")
    ax.set_title("What the A/B test measures vs what shipping would bring")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(record: dict[str, Any]) -> str:
    lines = ["| seed | design | expected lift | truth, same users | bias | control shift | treatment shift | "
             "observed lift (95% CI) |", "|---|---|---|---|---|---|---|---|"]
    for seed, r in [*record["runs"].items(), ("mean", None)]:
        for name in WORLDS[2:]:
            ab = record["summary"][name] if r is None else r["ab"][name]
            observed = f"{ab['observed_lift']:+.1%}"
            if r is not None:
                low, high = ab["observed_lift_ci95"]
                observed += f" ({low:+.1%}, {high:+.1%})"
            lines.append(f"| {seed} | {name[5:]} | {ab['expected_lift']:+.1%} | {ab['true_lift_same_users']:+.1%} | "
                         f"{ab['bias']:+.1%} | {ab['control_shift']:+.1%} | {ab['treatment_shift']:+.1%} | {observed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Protocol()
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--round-seconds", type=float, default=defaults.round_seconds)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--top-n", type=int, default=defaults.top_n)
    parser.add_argument("--browse-share", type=float, default=defaults.browse_share)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, help="worlds, registries and logs go here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/arm_learners.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/arm_learners.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("seekrec").setLevel(logging.WARNING)  # a publish per round per learner
    torch.set_num_threads(1)
    proto = Protocol(args.rounds, args.round_seconds, args.k, args.top_n, args.browse_share)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seekrec-arm-learners-") as tmp:
        work = args.work or Path(tmp)
        runs = {str(seed): run_seed(proto, seed, work / f"seed{seed}") for seed in args.seeds}
    record = {
        "command": (f"python benchmarks/arm_learners.py --rounds {proto.rounds} --round-seconds {proto.round_seconds} "
                    f"--k {proto.k} --top-n {proto.top_n} --browse-share {proto.browse_share} --seeds "
                    + " ".join(map(str, args.seeds))),
        "protocol": dataclasses.asdict(proto),
        "definitions": {
            "global_effect": "expected CTR of the explore-100% world / the greedy-100% world - 1",
            "expected_lift": "expected CTR of the explore arm / the greedy arm - 1, in one A/B world",
            "observed_lift": "clicks/shown of explore / greedy - 1, CI by the delta method over users",
            "true_lift_same_users": "expected CTR of the explore arm's users in the explore-100% world / of the greedy "
                                    "arm's users in the greedy-100% world - 1: the truth for this split's users",
            "bias": "expected_lift - true_lift_same_users: what the design gets wrong",
            "control_shift": "expected CTR of the greedy arm's users in this world / in the greedy-100% world - 1: "
                             "how much the control moved because of the design (the leak, for a shared learner)",
            "treatment_shift": "the same for the explore arm's users against the explore-100% world",
        },
        "runs": runs,
        "summary": summary(runs),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "note": "2 CPU cores shared with other jobs, run under nice"},
    }
    atomic_write_json(args.out, record)
    plot(record, args.plot)
    print(markdown(record))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
