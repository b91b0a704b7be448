"""Exploration benchmark: greedy vs epsilon-greedy vs Thompson re-ranking of a frozen model, in the simulator.

    python benchmarks/exploration.py --rounds 60 --round-seconds 1.25 --active-share 0.5 --k 10 --top-n 50 \
        --seeds 0 1 --out benchmarks/results/exploration.json --plot docs/exploration.png   # the defaults; ~2.5 min

The world and the model are the demo's quick ones (``seekrec demo --quick``: 400 users, 300 items, tastes and
the shared trend drifting a day every 3 s of live time, 60 releases): ``seekrec.demo.run.prepare`` simulates
the history and trains the demo's SASRec, the frozen A/B arm. No server: each policy is the server's path in
process. Every round, about half of the users (the same ones for every policy) ask for a slate at simulator time
``history end + round * round_seconds``; the ``SequencePredictor`` ranks ``max(k, top_n)`` unseen candidates
from the user's history (training history plus their clicks so far, as the server's histories hold them); the
policy picks the K to show; the simulator answers with clicks, which join the history (and, for Thompson, the
feedback counts). Each policy plays its own copy of the simulator, so users' memories follow what that policy
showed, and the clicks of every (user, round) draw from the same random stream under every policy.

Reported per policy: CTR (clicks / shown items) with a 95% CI over users and the paired difference to greedy;
expected CTR (the simulator's true click probabilities times the examination of each position: less noisy);
cumulative regret against the oracle slate (the K items, out and unseen at that time, with the highest true
click probability, placed best first) in expected clicks; catalogue coverage (distinct items shown / items the
model knows); the share of slots explored. Writes the JSON record and the plot, prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seekrec.data.simulator import Simulator
from seekrec.demo.run import DemoConfig, prepare
from seekrec.io import atomic_write_json
from seekrec.serving.explore import ClickAttribution, Explorer, ExploreSettings, FeedbackCounts
from seekrec.serving.predictor import Query
from seekrec.serving.sequence_predictor import SequencePredictor
from seekrec.training.run_dir import RunDir

log = logging.getLogger("benchmarks.exploration")
HISTORY_LEN = 200  # the server's default history_len: the seen filter's reach
POLICIES: dict[str, dict[str, Any]] = {  # name -> ExploreSettings fields (top_n and seed are added)
    "greedy": {"method": "greedy"},
    "epsilon 0.05": {"method": "epsilon_greedy", "epsilon": 0.05},
    "epsilon 0.2": {"method": "epsilon_greedy", "epsilon": 0.2},
    "thompson": {"method": "thompson", "rank_weight": 1.0},
    "thompson, CTR only": {"method": "thompson", "rank_weight": 0.0},  # the blend this module rejects
}


@dataclass
class PolicyRun:
    """What one policy produced, per user [U + 1] (row 0 unused) and per round [R]."""

    clicks: np.ndarray
    shown: np.ndarray
    expected: np.ndarray  # expected clicks of the shown slates
    round_clicks: np.ndarray
    round_shown: np.ndarray
    round_regret: np.ndarray  # oracle expected clicks - shown expected clicks, summed over the round's requests
    oracle: float = 0.0  # expected clicks of the oracle slates, summed
    explored: int = 0
    items_shown: set[int] = field(default_factory=set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--round-seconds", type=float, default=1.25,
                        help="live seconds per round (the quick demo's 75 s live phase is 60 rounds)")
    parser.add_argument("--active-share", type=float, default=0.5, help="share of users asking each round")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                        help="one world, model and play per seed (seeds the world, training and policies)")
    parser.add_argument("--work", type=Path, help="worlds, models and registries go here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/exploration.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/exploration.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # a batch of a few hundred short sequences: threads would only contend
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seekrec-exploration-") as tmp:
        work = args.work or Path(tmp)
        runs = {str(seed): run_seed(args, seed, work / f"seed{seed}") for seed in args.seeds}
    record = {
        "command": (f"python benchmarks/exploration.py --rounds {args.rounds} --round-seconds {args.round_seconds} "
                    f"--active-share {args.active_share} --k {args.k} --top-n {args.top_n} --seeds "
                    + " ".join(map(str, args.seeds))),
        "protocol": {"rounds": args.rounds, "round_seconds": args.round_seconds, "active_share": args.active_share,
                     "k": args.k, "top_n": args.top_n, "history_len": HISTORY_LEN},
        "policies": {name: {**fields, "top_n": args.top_n} for name, fields in POLICIES.items()},
        "runs": runs,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "note": "2 CPU cores shared with other jobs, run under nice; wall times are pessimistic"},
    }
    atomic_write_json(args.out, record)
    plot(record, args.plot)
    print(markdown(record))
    print(f"wrote {args.out} and {args.plot}")


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """The demo's quick world and frozen model for ``seed``, and every policy played in it."""
    start = time.perf_counter()
    sim, _, version, registry = prepare(DemoConfig(workdir=work, quick=True, seed=seed))
    prepared = time.perf_counter() - start
    predictor = SequencePredictor.from_registry(registry, version)
    trained = RunDir(work / "runs" / "initial").read_results()
    histories = initial_histories(sim)
    results, per_user_ctr, seconds = {}, {}, {"prepare": round(prepared, 1)}
    for name, fields in POLICIES.items():
        begin = time.perf_counter()
        settings = ExploreSettings(**fields, top_n=args.top_n, seed=seed)
        played = play(Simulator(sim.config), predictor, settings, histories, args, seed)
        results[name], per_user_ctr[name] = summarise(played, sim.config.n_items, args.k)
        seconds[name] = round(time.perf_counter() - begin, 1)
        log.info("seed %d, %s: CTR %.4f, regret %.1f (%.0f s)", seed, name, results[name]["ctr"]["mean"],
                 results[name]["cumulative_regret"], seconds[name])
    for name, res in results.items():  # the same users asked in every policy, so the rows line up
        res["ctr_minus_greedy"] = mean_ci(per_user_ctr[name] - per_user_ctr["greedy"])
    seconds["total"] = round(time.perf_counter() - start, 1)
    return {
        "world": {"source": "seekrec.demo.run.prepare, quick", **dataclasses.asdict(sim.config)},
        "model": {"version": version, "name": trained["model"], "test": trained["metrics"],
                  "note": "the demo's initial SASRec, frozen for the whole run (the demo's frozen arm)"},
        "drift_days": args.rounds * args.round_seconds * sim.config.live_time_scale / 86_400,
        "results": results,
        "seconds": seconds,
    }


def initial_histories(sim: Simulator) -> dict[int, list[int]]:
    """Each user's generated history as simulator item ids, oldest first (what the server's data_dir seeds)."""
    events = sim.generate().events
    users = events.column("user_id").to_numpy()
    items = events.column("item_id").to_numpy()
    order = np.argsort(users, kind="stable")  # the log is in time order; stable keeps it per user
    users, items = users[order], items[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    return {int(u): group.tolist() for u, group in zip(users[np.r_[0, cuts]], np.split(items, cuts))}


def play(sim: Simulator, predictor: SequencePredictor, settings: ExploreSettings,
         start: dict[int, list[int]], args: argparse.Namespace, seed: int) -> PolicyRun:
    """One policy against its own copy of the world, round by round (see the module docstring)."""
    cfg, k = sim.config, args.k
    n_users, n_all = cfg.n_users, cfg.n_items + cfg.live_new_items
    histories = {u: list(h[-HISTORY_LEN:]) for u, h in start.items()}
    attribution = ClickAttribution(FeedbackCounts(n_all), max_users=n_users)
    explorer = Explorer(settings, attribution.counts)
    examined = (1.0 + np.arange(k)) ** -cfg.position_bias  # [K] the simulator's examination by position
    out = PolicyRun(*(np.zeros(n_users + 1) for _ in range(3)), *(np.zeros(args.rounds) for _ in range(3)))
    for r in range(args.rounds):
        t = sim.history_end + (r + 1) * args.round_seconds
        users = np.flatnonzero(np.random.default_rng([seed, r]).random(n_users) < args.active_share) + 1
        wanted = explorer.candidates_needed(k)  # the predictor ranks max(k, top_n); the policy picks k
        queries = [Query(str(u), tuple(predictor.catalog.items.encode(histories[u]).tolist()), wanted)
                   for u in users.tolist()]
        available = np.arange(1, cfg.n_items + sim.released(t) + 1)  # [A] items out at t
        for user, rec in zip(users.tolist(), predictor.recommend(queries)):
            ids = np.asarray([int(raw) for raw in rec.item_ids], dtype=np.int64)
            slate = explorer.rerank(ids, rec.scores, k, explorer.request_rng(str(user), r))
            shown = slate.item_ids
            p = sim.click_probabilities(user, available, t)  # [A] before the user answers
            p[np.asarray(histories[user], dtype=np.int64) - 1] = 0.0  # the seen filter binds the oracle too
            oracle = float(np.sort(p)[::-1][:k] @ examined[: min(k, len(p))])
            got = float(p[shown - 1] @ examined[: len(shown)])
            clicks = sim.respond(user, shown, t, rng=np.random.default_rng([seed, 1, user, r]))
            attribution.served(str(user), shown)
            for item in shown[clicks].tolist():
                attribution.event(str(user), item)
            histories[user] = (histories[user] + shown[clicks].tolist())[-HISTORY_LEN:]
            out.clicks[user] += clicks.sum()
            out.shown[user] += k  # CTR per slate of k, as the demo counts it (a short slate shows fewer)
            out.expected[user] += got
            out.round_clicks[r] += clicks.sum()
            out.round_shown[r] += k
            out.round_regret[r] += oracle - got
            out.oracle += oracle
            out.explored += int(slate.explored.sum())
            out.items_shown.update(shown.tolist())
    return out


def mean_ci(values: np.ndarray) -> dict[str, float]:
    """Mean and normal 95% CI over users."""
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    return {"mean": float(values.mean()), "ci_low": float(values.mean() - half), "ci_high": float(values.mean() + half),
            "n_users": int(len(values))}


def summarise(played: PolicyRun, n_items: int, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """The policy's record and its per-user CTR [U'] (users who asked at least once, by id)."""
    asked = played.shown > 0
    per_user_ctr = played.clicks[asked] / played.shown[asked]
    return {
        "ctr": mean_ci(per_user_ctr),
        "expected_ctr": mean_ci(played.expected[asked] / played.shown[asked]),
        "oracle_expected_ctr": played.oracle / played.round_shown.sum(),
        "cumulative_regret": float(played.round_regret.sum()),
        "regret_per_request": float(played.round_regret.sum() / (played.round_shown.sum() / k)),
        "coverage": len(played.items_shown) / n_items,
        "explored_share": played.explored / played.round_shown.sum(),
        "requests": int(played.round_shown.sum() / k),
        "clicks": int(played.round_clicks.sum()),
        "per_round": {"ctr": (played.round_clicks / played.round_shown).tolist(),
                      "cumulative_regret": np.cumsum(played.round_regret).tolist()},
    }, per_user_ctr


def plot(record: dict[str, Any], out: Path) -> None:
    """Per seed (a row): cumulative regret against the oracle, the same minus greedy's, and per-round CTR."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    runs, p = record["runs"], record["protocol"]
    fig, axes = plt.subplots(len(runs), 3, figsize=(17, 4.2 * len(runs)), squeeze=False)
    for row, (seed, seed_run) in zip(axes, runs.items()):
        greedy = np.asarray(seed_run["results"]["greedy"]["per_round"]["cumulative_regret"])
        for name, res in seed_run["results"].items():
            regret, ctr = np.asarray(res["per_round"]["cumulative_regret"]), np.asarray(res["per_round"]["ctr"])
            rounds = np.arange(1, len(regret) + 1)
            row[0].plot(rounds, regret, label=name)
            row[1].plot(rounds, regret - greedy, label=name)
            row[2].plot(rounds, trailing_mean(ctr, 5), label=name)
        days = seed_run["drift_days"]
        row[0].set(title=f"seed {seed}: cumulative regret vs the oracle slate", ylabel="expected clicks lost")
        row[1].set(title=f"seed {seed}: cumulative regret minus greedy's (below 0: better)",
                   ylabel="expected clicks lost")
        row[2].set(title=f"seed {seed}: CTR per round (mean of the last 5 rounds)", ylabel="clicks / shown items")
        for ax in row:
            ax.set(xlabel=f"round ({p['rounds']} rounds = {days:.0f} drift days)")
            ax.grid(alpha=0.3)
        row[1].legend()
    fig.suptitle(f"exploration in the demo's quick world: its frozen SASRec, K={p['k']}, top_n={p['top_n']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and up to ``window - 1`` before it (the first ones average what exists)."""
    sums = np.cumsum(np.r_[0.0, values])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def markdown(record: dict[str, Any]) -> str:
    """One table row per (seed, policy)."""
    rows = ["| seed | policy | CTR (95% CI) | CTR - greedy (95% CI, paired) | expected CTR | cumulative regret "
            "| regret / request | coverage | explored slots |", "|---|---|---|---|---|---|---|---|---|"]
    for seed, seed_run in record["runs"].items():
        for name, res in seed_run["results"].items():
            c, d = res["ctr"], res["ctr_minus_greedy"]
            rows.append(f"| {seed} | {name} | {c['mean']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}] "
                        f"| {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] "
                        f"| {res['expected_ctr']['mean']:.4f} | {res['cumulative_regret']:.0f} "
                        f"| {res['regret_per_request']:.3f} | {res['coverage']:.1%} | {res['explored_share']:.1%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
