"""Users needed to see a real ranker gain: A/B test, A/B with CUPED and team-draft interleaving, in the simulator.

    python benchmarks/experiment_power.py --pre-rounds 12 --rounds 8 --round-seconds 1.25 --k 10 \
        --resamples 400 --alpha 0.01 --power 0.8 --browse-share 0.2 --seeds 0 1 2 \
        --out benchmarks/results/experiment_power.json --plot docs/experiment_power.png   # the defaults

The world is the demo's quick one (``seekrec demo --quick``: 400 users, 300 items, tastes and trend drifting a
day every 3 s of live time, new items released every second); ``seekrec.demo.run.prepare`` simulates the history
and trains the demo's SASRec. As in the demo's traffic, after a share ``browse_share`` of requests the user also
finds an item on their own (``Simulator.browse``): it joins their history and B's log but no CTR, and it is how
released items reach the log. No server: every ranker is a ``SequencePredictor`` in process, as in
``benchmarks/exploration.py``.

Timeline, in rounds of ``round_seconds`` live time; every user asks for a slate of K every round:

**B** is the demo's real-time model: the online trainer of ``seekrec stream-train`` (``OnlineTrainer``, run in
process over its own SQLite event log, with the demo's settings: lr 3e-3, 64 new events per step plus 3 replayed
each) started from A's weights. After every round the round's clicks are appended to its log, the trainer drains
them with its usual steps (``StreamExamples`` rows, ``TrainStep``; an item first seen grows the item table with
``grow_items_keeping_state``) and publishes a version, which serves B's requests the next round (the demo publishes
every second and the server polls every 0.5 s: about the same one-round lag). B is never retrained offline.

1. **Pre-period** (``pre_rounds``): every user is served by **A**, the demo's frozen initial SASRec. B learns from
   these clicks as they happen (the demo's trainer starts learning at once), and each user's pre-period CTR is the
   CUPED covariate.
2. **Experiment** (``rounds``), played twice from the same end-of-pre-period world (a copy of the simulator, of
   the histories and of B's trainer, its checkpoint and event log, each), with the clicks of every (user, round)
   drawn from the same random stream in both:
   - *A/B*: users split 50/50 by a seeded hash of their id; each gets its arm's top K every round.
   - *Interleaving*: every user gets the team-draft interleaving of A's and B's top K every round; each
     impression credits the team whose items got more clicks (``interleaving_credit``).

   In both designs B keeps learning from **every** user's clicks, A's arm's included: in the demo the server
   logs every arm's events to the one log the online trainer reads, so a shared online learner sees all traffic,
   and both designs then measure the same learner. A stays frozen.

Users needed. For a total of n users (both arms together for A/B), ``resamples`` experiments are drawn from the
played users with replacement (the users as the unit; n/2 from each A/B arm, n for interleaving); the power is
the share with p < ``alpha`` and the estimate on the side of the ranker the simulator's ground truth favours
(its expected clicks of A's and B's own top K for every interleaving request): ``ratio_test`` on per-user clicks / shown (A/B), ``welch_test`` on the
``cuped``-adjusted per-user CTR with the pre-period CTR as covariate (A/B + CUPED; the same draws as A/B), and
``interleaving_user_test`` (one vote per user) or ``interleaving_click_test`` (the per-user difference in clicks
on each ranker's positions, a paired t-test), on all clicks or leaving out clicks on items both rankers' top K
hold (``team_clicks(..., shared)``). "Users needed" is the n at which the power reaches ``power``,
interpolated in log n between the two grid sizes around it. Sizes past the 400 played users resample them, i.e.
they assume a population like them. The normal-approximation ``users_needed`` from the measured effect and
standard deviation is reported beside it as a check.

Also reported: the CTR difference's 95% CI width on all played users with and without CUPED, the variance
reduction, the correlation between pre-period and experiment CTR (within arm), and the arms' CTRs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from benchmarks.exploration import initial_histories
from seekrec.data.simulator import Simulator
from seekrec.demo.run import DemoConfig, prepare
from seekrec.evaluation.experiments import cuped, ratio_test, users_needed, welch_test
from seekrec.evaluation.interleaving import (
    interleaving_click_test,
    interleaving_credit,
    interleaving_user_test,
    team_clicks,
    team_draft_interleave,
)
from seekrec.experiments.assignment import bucket
from seekrec.experiments.definition import N_BUCKETS
from seekrec.io import atomic_write_json
from seekrec.online.event_log import Event, EventLog
from seekrec.online.factory import open_event_log
from seekrec.online.trainer import OnlineTrainer, OnlineTrainerConfig
from seekrec.registry import ModelRegistry
from seekrec.serving.predictor import Query
from seekrec.serving.sequence_predictor import SequencePredictor
from seekrec.training.run_dir import RunDir

log = logging.getLogger("benchmarks.experiment_power")
HISTORY_LEN = 200  # the server's default history_len: the seen filter's reach
METHODS = ("ab", "ab_cuped", "interleaving", "interleaving_clicks", "interleaving_distinct")
Ranker = Callable[[Sequence[int], dict[int, list[int]], int], list[np.ndarray]]  # users, histories, k -> [K] ids
Click = tuple[int, int, float]  # (user, item, unix seconds), simulator ids


@dataclass(frozen=True)
class PowerConfig:
    """The protocol of one seed's play and analysis."""

    pre_rounds: int = 12
    rounds: int = 8
    round_seconds: float = 1.25
    k: int = 10
    resamples: int = 400
    alpha: float = 0.01
    power: float = 0.8
    min_users: int = 20
    max_users: int = 200_000
    browse_share: float = 0.2  # the demo's: after this share of requests the user also finds an item on their own

    def __post_init__(self) -> None:
        if min(self.pre_rounds, self.rounds, self.k, self.resamples) < 1 or self.round_seconds <= 0:
            raise ValueError("pre_rounds, rounds, k and resamples must be >= 1 and round_seconds > 0")
        if not (0 < self.alpha < 1 and 0 < self.power < 1):
            raise ValueError(f"alpha ({self.alpha}) and power ({self.power}) must lie in (0, 1)")
        if not 0 <= self.browse_share <= 1:
            raise ValueError(f"browse_share must lie in [0, 1], got {self.browse_share}")
        if not 4 <= self.min_users < self.max_users:
            raise ValueError(f"need 4 <= min_users < max_users, got {self.min_users}, {self.max_users}")


@dataclass
class Played:
    """Per-user outcomes [U + 1] (row 0 unused) of the pre-period and both experiment designs."""

    pre_clicks: np.ndarray
    pre_shown: np.ndarray
    arm: np.ndarray  # 0: A, 1: B (the A/B design's hash split)
    ab_clicks: np.ndarray
    ab_shown: np.ndarray
    votes: np.ndarray  # interleaving: -1 prefers A, 0 tie, +1 prefers B (sign of the user's impression credits)
    team_clicks: np.ndarray  # [2, U + 1] interleaving: clicks on A's and on B's positions per user
    distinct_clicks: np.ndarray  # [2, U + 1] the same, leaving out items both rankers' top K hold (``shared``)
    impressions: dict[str, int]  # interleaving impressions won by A, B, tied
    expected: np.ndarray  # [2] the simulator's expected clicks of A's and B's own top K over every request

    @property
    def truth(self) -> int:
        """The ranker the hidden ground truth favours: +1 B, -1 A (0: a tie)."""
        return int(np.sign(self.expected[1] - self.expected[0]))


def arm_of(user: int, salt: str) -> int:
    """The A/B arm (0 or 1) of ``user``: the server's salted bucket hash, split 50/50."""
    return int(bucket(salt, str(user)) >= N_BUCKETS // 2)


def predictor_ranker(predictor: SequencePredictor) -> Ranker:
    """A ranker from a predictor: each user's history (simulator ids; items it does not know are dropped)."""

    def rank(users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]:
        queries = []
        for u in users:
            ids = predictor.catalog.items.encode(histories[u])
            queries.append(Query(str(u), tuple(ids[ids > 0].tolist()), k))
        return [np.asarray([int(raw) for raw in rec.item_ids], dtype=np.int64) for rec in predictor.recommend(queries)]

    return rank


class Learner(Protocol):
    """A ranker that may learn from the clicks it is shown after each round."""

    def rank(self, users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]: ...

    def learn(self, clicks: Sequence[Click]) -> None: ...


@dataclass
class Frozen:
    """A ranker that never learns (A; the test's rankers)."""

    ranker: Ranker

    def rank(self, users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]:
        return self.ranker(users, histories, k)

    def learn(self, clicks: Sequence[Click]) -> None:
        pass  # frozen: the clicks change nothing


ONLINE_SETTINGS = {"lr": 3e-3}  # the demo's ``stream-train`` flags; events_per_step and replay are the defaults


class OnlineLearner:
    """B: the demo's online trainer (``OnlineTrainer``) in process, over its own SQLite event log in ``work``.

    ``learn`` appends the clicks to the log, runs the trainer until the log is drained (its own loop: 64 new
    events per step plus replay, the item table grown for items first seen) and publishes one version, which
    ``rank`` serves from then on. ``fork`` stops this learner and starts copies of it (checkpoint, log) that
    resume where it stopped, so both experiment designs start from the same B.
    """

    def __init__(self, registry: ModelRegistry, data_dir: Path, work: Path, seed: int) -> None:
        self.registry, self.data_dir, self.work, self.seed = registry, data_dir, work, seed
        url = f"sqlite:///{(work / 'events.db').resolve()}"
        # publishing only at the end of each drain (run() publishes what is new when it stops)
        self.config = OnlineTrainerConfig(registry=registry.root, event_log=url, dataset=data_dir,
                                          state_dir=work / "trainer", publish_every_events=10**9,
                                          publish_every_seconds=1e9, block_ms=0, stop_when_idle=True,
                                          seed=seed, registry_keep=1000, **ONLINE_SETTINGS)
        work.mkdir(parents=True, exist_ok=True)
        self.events: EventLog = open_event_log(url)
        self.trainer = OnlineTrainer(self.config)
        self.version = ""
        self._load(self.trainer.state["published_version"])
        self.learn_seconds = 0.0

    def _load(self, version: str) -> None:
        if version != self.version:
            self.version = version
            self.ranker = predictor_ranker(SequencePredictor.from_registry(self.registry, version))

    def rank(self, users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]:
        return self.ranker(users, histories, k)

    def learn(self, clicks: Sequence[Click]) -> None:
        if not clicks:
            return
        start = time.perf_counter()
        self.events.append([Event(str(user), str(item), float(t)) for user, item, t in clicks])
        self.trainer.run()
        self._load(self.trainer.state["published_version"])
        self.learn_seconds += time.perf_counter() - start

    def summary(self) -> dict[str, Any]:
        s = self.trainer.summary()
        return {"version": self.version, "events_trained": s["events_trained"], "steps": s["steps"],
                "n_items": s["n_items"], "versions_published": len(s["versions_published"]),
                "learn_seconds": round(self.learn_seconds, 1)}

    def close(self) -> None:
        self.trainer.close()
        self.events.close()

    def fork(self, work: Path) -> OnlineLearner:
        """A copy that resumes from this learner's last checkpoint and log (this learner is closed first)."""
        self.close()
        shutil.copytree(self.work, work)
        return OnlineLearner(self.registry, self.data_dir, work, self.seed)


def click(sim: Simulator, histories: dict[int, list[int]], user: int, slate: np.ndarray, t: float,
          rng: np.random.Generator) -> np.ndarray:
    """The simulator's clicks [K] on ``slate``; clicked items join the user's history."""
    clicks = sim.respond(user, slate, t, rng=rng)
    histories[user] = (histories[user] + slate[clicks].tolist())[-HISTORY_LEN:]
    return clicks


def browse(sim: Simulator, histories: dict[int, list[int]], user: int, t: float, share: float,
           rng: np.random.Generator) -> list[Click]:
    """With probability ``share``, an item the user finds on their own (``Simulator.browse``, as the demo's
    traffic sends it: the organic events through which new releases reach the log). It joins the user's history
    and B's log, and counts for neither ranker's CTR."""
    if rng.random() >= share:
        return []
    found = sim.browse(user, t, rng=rng)
    histories[user] = (histories[user] + [found])[-HISTORY_LEN:]
    return [(user, found, t)]


def round_time(sim: Simulator, cfg: PowerConfig, r: int) -> float:
    return sim.history_end + (r + 1) * cfg.round_seconds


def play_pre(sim: Simulator, rank_a: Ranker, histories: dict[int, list[int]], cfg: PowerConfig,
             seed: int, learner: Learner | None = None) -> tuple[np.ndarray, np.ndarray, list[Click]]:
    """Pre-period: every user served by A every round, ``learner`` learning from each round's clicks after it;
    per-user clicks, shown, and the (user, item, time) clicks on the slates (the learner also gets the browsed
    items)."""
    n = sim.config.n_users
    clicks_per_user, shown, log_rows = np.zeros(n + 1), np.zeros(n + 1), []
    users = list(range(1, n + 1))
    for r in range(cfg.pre_rounds):
        t = round_time(sim, cfg, r)
        round_rows: list[Click] = []
        organic: list[Click] = []
        for user, slate in zip(users, rank_a(users, histories, cfg.k)):
            clicks = click(sim, histories, user, slate, t, np.random.default_rng([seed, 1, user, r]))
            clicks_per_user[user] += clicks.sum()
            shown[user] += len(slate)
            round_rows += [(user, item, t) for item in slate[clicks].tolist()]
            organic += browse(sim, histories, user, t, cfg.browse_share, np.random.default_rng([seed, 4, user, r]))
        if learner is not None:
            learner.learn(sorted(round_rows + organic, key=lambda row: row[0]))
        log_rows += round_rows
    return clicks_per_user, shown, log_rows


def play_experiment(sim: Simulator, rank_a: Ranker, b_ab: Learner, b_il: Learner, histories: dict[int, list[int]],
                    pre: tuple[np.ndarray, np.ndarray], cfg: PowerConfig, seed: int) -> Played:
    """The A/B design and the interleaving design, each from its own copy of the end-of-pre-period world and its
    own copy of B (``b_ab``, ``b_il``), which learns from every user's clicks after each round."""
    n = sim.config.n_users
    users = list(range(1, n + 1))
    arm = np.array([0] + [arm_of(u, f"power-{seed}") for u in users])
    out = Played(pre[0], pre[1], arm, np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64),
                 np.zeros((2, n + 1)), np.zeros((2, n + 1)), {"a": 0, "b": 0, "tie": 0}, np.zeros(2))
    examined = (1.0 + np.arange(cfg.k)) ** -sim.config.position_bias  # [K] the simulator's examination
    ab_sim, ab_hist = copy.deepcopy(sim), copy.deepcopy(histories)
    il_sim, il_hist = copy.deepcopy(sim), copy.deepcopy(histories)
    credit = np.zeros(n + 1, dtype=np.int64)
    for r in range(cfg.pre_rounds, cfg.pre_rounds + cfg.rounds):
        t = round_time(sim, cfg, r)
        arms = [[u for u in users if arm[u] == a] for a in (0, 1)]
        ab_rows: list[Click] = []
        for a, rank in ((0, rank_a), (1, b_ab.rank)):
            for user, slate in zip(arms[a], rank(arms[a], ab_hist, cfg.k)):
                clicks = click(ab_sim, ab_hist, user, slate, t, np.random.default_rng([seed, 1, user, r]))
                out.ab_clicks[user] += clicks.sum()
                out.ab_shown[user] += len(slate)
                ab_rows += [(user, item, t) for item in slate[clicks].tolist()]
                ab_rows += browse(ab_sim, ab_hist, user, t, cfg.browse_share, np.random.default_rng([seed, 4, user, r]))
        b_ab.learn(sorted(ab_rows, key=lambda row: row[0]))  # user order, as the interleaving round
        il_rows: list[Click] = []
        lists_a, lists_b = rank_a(users, il_hist, cfg.k), b_il.rank(users, il_hist, cfg.k)
        for user, list_a, list_b in zip(users, lists_a, lists_b):
            for j, own in enumerate((list_a, list_b)):  # what each ranker alone would earn (changes nothing)
                out.expected[j] += il_sim.click_probabilities(user, own, t) @ examined[: len(own)]
            merged = team_draft_interleave(list_a, list_b, cfg.k, np.random.default_rng([seed, 2, user, r]))
            clicks = click(il_sim, il_hist, user, merged.ids, t, np.random.default_rng([seed, 1, user, r]))
            il_rows += [(user, item, t) for item in merged.ids[clicks].tolist()]
            il_rows += browse(il_sim, il_hist, user, t, cfg.browse_share, np.random.default_rng([seed, 4, user, r]))
            won = int(interleaving_credit(merged.teams, np.flatnonzero(clicks)))
            out.team_clicks[:, user] += team_clicks(merged.teams, np.flatnonzero(clicks))
            out.distinct_clicks[:, user] += team_clicks(merged.teams, np.flatnonzero(clicks), merged.shared)
            credit[user] += won
            out.impressions[{-1: "a", 0: "tie", 1: "b"}[won]] += 1
        b_il.learn(il_rows)
    out.votes = np.sign(credit)
    return out


def size_grid(cfg: PowerConfig) -> np.ndarray:
    """Even total user counts, about 12 per decade from ``min_users`` to ``max_users``."""
    decades = math.log10(cfg.max_users / cfg.min_users)
    sizes = np.geomspace(cfg.min_users, cfg.max_users, int(decades * 12) + 1)
    return np.unique(2 * np.round(sizes / 2).astype(np.int64))


def method_detects(played: Played, n: int, alpha: float, rng: np.random.Generator) -> dict[str, bool]:
    """One resampled experiment of ``n`` users: whether each method finds p < ``alpha`` in the direction the
    ground truth favours (A/B and CUPED share the draw)."""
    arm_users = [np.flatnonzero(played.arm[1:] == a) + 1 for a in (0, 1)]
    a, b = (rng.choice(arm_users[i], size=n // 2) for i in (0, 1))
    pre = played.pre_clicks / np.maximum(played.pre_shown, 1)
    post = played.ab_clicks / np.maximum(played.ab_shown, 1)
    ab = ratio_test(played.ab_clicks[a], played.ab_shown[a], played.ab_clicks[b], played.ab_shown[b])
    if np.ptp(pre[np.r_[a, b]]) > 0:
        adjusted = cuped(post[a], pre[a], post[b], pre[b])
        with_cuped = welch_test(adjusted.y_a, adjusted.y_b)
    else:  # a constant covariate explains nothing: CUPED is the plain test
        with_cuped = welch_test(post[a], post[b])
    users = rng.choice(np.arange(1, len(played.votes)), size=n)
    il = interleaving_user_test(np.arange(n), played.votes[users])
    by_clicks = interleaving_click_test(np.arange(n), played.team_clicks[0, users], played.team_clicks[1, users])
    distinct = interleaving_click_test(np.arange(n), played.distinct_clicks[0, users], played.distinct_clicks[1, users])
    found = {"ab": (ab.p_value, ab.diff), "ab_cuped": (with_cuped.p_value, with_cuped.diff),
             "interleaving": (il.p_value, il.delta), "interleaving_clicks": (by_clicks.p_value, by_clicks.diff),
             "interleaving_distinct": (distinct.p_value, distinct.diff)}
    return {m: bool(p < alpha and np.sign(effect) == played.truth) for m, (p, effect) in found.items()}


def power_curves(played: Played, cfg: PowerConfig, seed: int) -> dict[str, list[float]]:
    """Power of every method at every grid size (a method stops once its power passes 0.99)."""
    grid = size_grid(cfg)
    curves: dict[str, list[float]] = {"users": grid.tolist(), **{m: [] for m in METHODS}}
    done: set[str] = set()
    for i, n in enumerate(grid.tolist()):
        rejected = dict.fromkeys(METHODS, 0)
        for s in range(cfg.resamples):
            for method, hit in method_detects(played, n, cfg.alpha, np.random.default_rng([seed, 3, i, s])).items():
                rejected[method] += hit
        for method in METHODS:
            curves[method].append(1.0 if method in done else rejected[method] / cfg.resamples)
            if curves[method][-1] > 0.99:
                done.add(method)
        if done == set(METHODS):
            break
    curves["users"] = curves["users"][: len(curves["ab"])]
    return curves


def users_at_power(users: Sequence[int], power: Sequence[float], target: float) -> float | None:
    """The n where ``power`` first reaches ``target``, interpolated in log n; None if the grid never does."""
    for i, p in enumerate(power):
        if p >= target:
            if i == 0:
                return float(users[0])
            lo, hi = math.log(users[i - 1]), math.log(users[i])
            frac = (target - power[i - 1]) / (p - power[i - 1])
            return float(math.exp(lo + frac * (hi - lo)))
    return None


def full_sample(played: Played, cfg: PowerConfig) -> dict[str, Any]:
    """All played users: CTRs, the difference's CI with and without CUPED, correlation, analytic sample sizes."""
    a, b = (np.flatnonzero(played.arm[1:] == i) + 1 for i in (0, 1))
    pre = played.pre_clicks / np.maximum(played.pre_shown, 1)  # row 0 (no user) shows nothing
    post = played.ab_clicks / np.maximum(played.ab_shown, 1)
    raw = ratio_test(played.ab_clicks[a], played.ab_shown[a], played.ab_clicks[b], played.ab_shown[b])
    plain = welch_test(post[a], post[b])
    adjusted = cuped(post[a], pre[a], post[b], pre[b])
    cup = welch_test(adjusted.y_a, adjusted.y_b)
    centred = [np.r_[v[a] - v[a].mean(), v[b] - v[b].mean()] for v in (pre, post)]
    effect = raw.diff
    sd = math.sqrt((post[a].var(ddof=1) + post[b].var(ddof=1)) / 2)
    sd_cuped = math.sqrt((adjusted.y_a.var(ddof=1) + adjusted.y_b.var(ddof=1)) / 2)
    analytic = (lambda s: 2 * users_needed(effect, s, cfg.alpha, cfg.power)) if effect != 0 else (lambda s: None)
    width, width_cuped = raw.ci_high - raw.ci_low, cup.ci_high - cup.ci_low
    return {
        "users": {"a": int(len(a)), "b": int(len(b))},
        "ctr_pre": float(played.pre_clicks[1:].sum() / played.pre_shown[1:].sum()),
        "expected_ctr_a": played.expected[0] / (cfg.k * cfg.rounds * (len(a) + len(b))),
        "expected_ctr_b": played.expected[1] / (cfg.k * cfg.rounds * (len(a) + len(b))),
        "true_relative_gain": played.expected[1] / played.expected[0] - 1,
        "ctr_a": raw.ratio_a, "ctr_b": raw.ratio_b, "diff": raw.diff, "relative_lift": raw.relative_lift,
        "diff_cuped": cup.diff,  # CUPED also removes the arms' chance difference in pre-period CTR
        "p_value": raw.p_value, "p_value_cuped": cup.p_value,
        "ci95_width": width, "ci95_width_welch": plain.ci_high - plain.ci_low, "ci95_width_cuped": width_cuped,
        "ci_narrower_with_cuped": 1 - width_cuped / width,
        "cuped_theta": adjusted.theta, "cuped_variance_reduction": adjusted.variance_reduction,
        "corr_pre_post": float(np.corrcoef(*centred)[0, 1]),
        "analytic_users_needed": {"ab": analytic(sd), "ab_cuped": analytic(sd_cuped)},
        "interleaving": {"impressions": played.impressions,
                         "user_votes": {"a": int(np.sum(played.votes[1:] < 0)), "b": int(np.sum(played.votes[1:] > 0)),
                                        "tie": int(np.sum(played.votes[1:] == 0))},
                         "p_value": interleaving_user_test(np.arange(1, len(played.votes)), played.votes[1:]).p_value,
                         "clicks_per_user": {"a": float(played.team_clicks[0, 1:].mean()),
                                             "b": float(played.team_clicks[1, 1:].mean())},
                         "p_value_clicks": interleaving_click_test(np.arange(1, len(played.votes)),
                                                                   played.team_clicks[0, 1:],
                                                                   played.team_clicks[1, 1:]).p_value},
    }


def analyse(played: Played, cfg: PowerConfig, seed: int) -> dict[str, Any]:
    """The full-sample figures, the power curves and the users each method needs."""
    curves = power_curves(played, cfg, seed)
    needed = {m: users_at_power(curves["users"], curves[m], cfg.power) for m in METHODS}
    def ratio(method: str) -> float | None:
        return needed["ab"] / needed[method] if needed["ab"] and needed[method] else None

    return {"full_sample": full_sample(played, cfg), "power": curves, "users_needed": needed,
            "ab_over_interleaving": ratio("interleaving"), "ab_over_interleaving_clicks": ratio("interleaving_clicks"),
            "ab_over_interleaving_distinct": ratio("interleaving_distinct")}


def run_seed(cfg: PowerConfig, seed: int, work: Path) -> dict[str, Any]:
    """One world: prepare A, start B's online trainer from it, play the pre-period, fork B, play both designs,
    analyse."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    sim, data_dir, version, registry = prepare(DemoConfig(workdir=work, quick=True, seed=seed))
    seconds["prepare"] = time.perf_counter() - start
    rank_a = predictor_ranker(SequencePredictor.from_registry(registry, version))
    histories = {u: h[-HISTORY_LEN:] for u, h in initial_histories(sim).items()}
    begin = time.perf_counter()
    learner = OnlineLearner(registry, data_dir, work / "online" / "pre", seed)
    pre_clicks, pre_shown, log_rows = play_pre(sim, rank_a, histories, cfg, seed, learner)
    seconds["pre_period"] = time.perf_counter() - begin
    at_fork = learner.summary()
    b_ab, b_il = learner.fork(work / "online" / "ab"), learner.fork(work / "online" / "interleaving")
    begin = time.perf_counter()
    played = play_experiment(sim, rank_a, b_ab, b_il, histories, (pre_clicks, pre_shown), cfg, seed)
    seconds["experiment"] = time.perf_counter() - begin
    seconds["b_learning"] = at_fork["learn_seconds"] + b_ab.learn_seconds + b_il.learn_seconds
    online = {"after_pre_period": at_fork, "ab": b_ab.summary(), "interleaving": b_il.summary()}
    b_ab.close()
    b_il.close()
    begin = time.perf_counter()
    result = analyse(played, cfg, seed)
    seconds["analysis"] = time.perf_counter() - begin
    seconds["total"] = time.perf_counter() - start
    results_a = RunDir(work / "runs" / "initial").read_results()
    log.info("seed %d: CTR A %.4f B %.4f, users needed %s (%.0f s)", seed, result["full_sample"]["ctr_a"],
             result["full_sample"]["ctr_b"], result["users_needed"], seconds["total"])
    return {
        "world": {"source": "seekrec.demo.run.prepare, quick", **dataclasses.asdict(sim.config)},
        "models": {"a": {"version": version, "test": results_a["metrics"],
                         "note": "the demo's initial SASRec, frozen"},
                   "b": {"base_version": version, "pre_period_clicks": len(log_rows), "online": online,
                         "settings": {**ONLINE_SETTINGS, "events_per_step": learner.config.events_per_step,
                                      "replay_ratio": learner.config.replay_ratio},
                         "note": "the demo's online trainer (OnlineTrainer) from A's weights, learning from every "
                                 "user's clicks after each round and publishing one version per round; "
                                 "n_items: its item table at the end (new items learned online)"}},
        **result,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def summary(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of the headline figures (None where a seed never reached the power)."""

    def mean(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    out: dict[str, Any] = {f"users_needed_{m}": mean([r["users_needed"][m] for r in runs.values()]) for m in METHODS}
    for key in ("ab_over_interleaving", "ab_over_interleaving_clicks", "ab_over_interleaving_distinct"):
        out[key] = mean([r[key] for r in runs.values()])
    for key in ("true_relative_gain", "ci_narrower_with_cuped", "cuped_variance_reduction", "corr_pre_post", "relative_lift", "diff"):
        out[key] = mean([r["full_sample"][key] for r in runs.values()])
    return out


def plot(record: dict[str, Any], out: Path) -> None:
    """Power against total users (log scale), one panel per seed."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    runs, p = record["runs"], record["protocol"]
    labels = {"ab": "A/B (delta-method CTR)", "ab_cuped": "A/B + CUPED",
              "interleaving": "team-draft interleaving (user votes)",
              "interleaving_clicks": "team-draft interleaving (click difference)",
              "interleaving_distinct": "team-draft interleaving (click difference, items one ranker lacks)"}
    fig, axes = plt.subplots(1, len(runs), figsize=(6.5 * len(runs), 4.5), squeeze=False)
    for ax, (seed, run) in zip(axes[0], runs.items()):
        for method in METHODS:
            ax.plot(run["power"]["users"], run["power"][method], marker=".", label=labels[method])
        ax.axhline(p["power"], color="grey", ls="--", lw=0.8)
        fs = run["full_sample"]
        ax.set(xscale="log", xlabel="total users in the experiment", ylabel=f"power at p < {p['alpha']}",
               title=f"seed {seed}: CTR A {fs['ctr_a']:.4f}, B {fs['ctr_b']:.4f}; true gain {fs['true_relative_gain']:+.1%}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"frozen SASRec (A) vs the online trainer learning from every click since A (B, "
                 f"{p['pre_rounds']} pre-period rounds): {p['rounds']} rounds of "
                 f"K={p['k']} per user, {p['resamples']} resamples per size")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def markdown(record: dict[str, Any]) -> str:
    """One row per seed and a mean row: users needed per method, and A/B's over each interleaving test's."""
    rows = ["| seed | CTR A | CTR B | lift | true gain | users needed: A/B | A/B + CUPED | interleaving, votes "
            "| clicks | clicks, shared left out | A/B ÷ votes | ÷ clicks | ÷ clicks, shared left out "
            "| CI narrower with CUPED | corr(pre, post) |", "|" + "---|" * 15]

    def num(v: float | None, fmt: str = ".0f") -> str:
        return "not reached" if v is None else format(v, fmt)

    for seed, run in record["runs"].items():
        fs, need = run["full_sample"], run["users_needed"]
        rows.append(f"| {seed} | {fs['ctr_a']:.4f} | {fs['ctr_b']:.4f} | {fs['relative_lift']:+.1%} "
                    f"| {fs['true_relative_gain']:+.1%} | " + " | ".join(num(need[m]) for m in METHODS)
                    + " | " + " | ".join(num(run[f"ab_over_{m}"], ".1f") + "x" for m in METHODS[2:])
                    + f" | {fs['ci_narrower_with_cuped']:.1%} | {fs['corr_pre_post']:.2f} |")
    s = record["summary"]
    rows.append(f"| mean | | | {num(s['relative_lift'], '+.1%')} | {num(s['true_relative_gain'], '+.1%')} | "
                + " | ".join(num(s[f"users_needed_{m}"]) for m in METHODS)
                + " | " + " | ".join(num(s[f"ab_over_{m}"], ".1f") + "x" for m in METHODS[2:])
                + f" | {num(s['ci_narrower_with_cuped'], '.1%')} | {num(s['corr_pre_post'], '.2f')} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = PowerConfig()
    parser.add_argument("--pre-rounds", type=int, default=defaults.pre_rounds)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--round-seconds", type=float, default=defaults.round_seconds)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--resamples", type=int, default=defaults.resamples)
    parser.add_argument("--alpha", type=float, default=defaults.alpha)
    parser.add_argument("--power", type=float, default=defaults.power)
    parser.add_argument("--browse-share", type=float, default=defaults.browse_share)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, help="worlds, models and registries go here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/experiment_power.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/experiment_power.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # a batch of a few hundred short sequences: threads would only contend
    cfg = PowerConfig(args.pre_rounds, args.rounds, args.round_seconds, args.k, args.resamples, args.alpha, args.power,
                      browse_share=args.browse_share)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seekrec-experiment-power-") as tmp:
        work = args.work or Path(tmp)
        runs = {str(seed): run_seed(cfg, seed, work / f"seed{seed}") for seed in args.seeds}
    record = {
        "command": (f"python benchmarks/experiment_power.py --pre-rounds {cfg.pre_rounds} --rounds {cfg.rounds} "
                    f"--round-seconds {cfg.round_seconds} --k {cfg.k} --resamples {cfg.resamples} --alpha {cfg.alpha} "
                    f"--power {cfg.power} --browse-share {cfg.browse_share} --seeds " + " ".join(map(str, args.seeds))),
        "protocol": dataclasses.asdict(cfg),
        "definitions": {
            "users_needed": "total users (both arms for A/B) at which the share of resampled experiments with "
                            "p < alpha, on the side of the truly better ranker, reaches power; interpolated in log n on the grid; resampled with replacement "
                            "from the played users",
            "ci_narrower_with_cuped": "1 - width of the 95% CI of the CTR difference from welch_test on "
                                      "cuped-adjusted per-user CTR / width from ratio_test on raw clicks/shown, "
                                      "all played users",
            "true_relative_gain": "expected clicks (simulator probabilities x examination) of B's own top K / "
                                  "A's - 1, over every interleaving request: the gain with no click noise",
            "corr_pre_post": "Pearson correlation of per-user pre-period CTR and experiment CTR, centred within arm",
        },
        "runs": runs,
        "summary": summary(runs),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "note": "2 CPU cores shared with other jobs, run under nice; wall times are pessimistic"},
    }
    atomic_write_json(args.out, record)
    plot(record, args.plot)
    print(markdown(record))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
