"""benchmarks/experiment_power.py's core on a tiny simulator: a random ranker (A) against the simulator's own
oracle (B), no training (B's online trainer is replaced by a learner that records the clicks it is given);
structure and sanity of the play and the power analysis."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from benchmarks.experiment_power import (
    METHODS,
    Click,
    Frozen,
    PowerConfig,
    Ranker,
    analyse,
    arm_of,
    initial_histories,
    play_experiment,
    play_pre,
    users_at_power,
)
from seekrec.data.simulator import Simulator, SimulatorConfig

CFG = PowerConfig(pre_rounds=2, rounds=3, k=5, resamples=30, min_users=10, max_users=3000)


def tiny_world() -> Simulator:
    return Simulator(SimulatorConfig(n_users=60, n_items=80, mean_events_per_user=8.0, live_new_items=5,
                                     release_every_seconds=1.0, seed=0))


def random_ranker(sim: Simulator) -> Ranker:
    """K unseen catalogue items in a seeded random order (one stream per call)."""
    rng = np.random.default_rng(7)

    def rank(users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]:
        out = []
        for u in users:
            pool = np.setdiff1d(np.arange(1, sim.config.n_items + 1), histories[u])
            out.append(rng.permutation(pool)[:k])
        return out

    return rank


def oracle_ranker(sim: Simulator) -> Ranker:
    """The K unseen catalogue items the simulator's truth likes best at the end of the history."""

    def rank(users: Sequence[int], histories: dict[int, list[int]], k: int) -> list[np.ndarray]:
        out = []
        for u in users:
            pool = np.setdiff1d(np.arange(1, sim.config.n_items + 1), histories[u])
            p = sim.click_probabilities(u, pool, sim.history_end)
            out.append(pool[np.argsort(-p, kind="stable")[:k]])
        return out

    return rank


@dataclass
class Recording(Frozen):
    """A frozen ranker that records the clicks it is asked to learn from, round by round."""

    rounds: list[list[Click]] = field(default_factory=list)

    def learn(self, clicks: Sequence[Click]) -> None:
        self.rounds.append(list(clicks))


@pytest.fixture(scope="module")
def played():
    sim = tiny_world()
    histories = initial_histories(sim)
    rank_a = random_ranker(sim)
    pre_b, b_ab, b_il = (Recording(oracle_ranker(sim)) for _ in range(3))
    pre_clicks, pre_shown, rows = play_pre(sim, rank_a, histories, CFG, seed=0, learner=pre_b)
    out = play_experiment(sim, rank_a, b_ab, b_il, histories, (pre_clicks, pre_shown), CFG, seed=0)
    return sim, rows, out, (pre_b, b_ab, b_il)


def test_play_records_every_request_and_the_truth_favours_the_oracle(played):
    sim, rows, out, _ = played
    n = sim.config.n_users
    assert np.all(out.pre_shown[1:] == CFG.pre_rounds * CFG.k) and np.all(out.ab_shown[1:] == CFG.rounds * CFG.k)
    assert out.pre_clicks[1:].sum() == len(rows)
    assert sum(out.impressions.values()) == n * CFG.rounds
    assert set(np.unique(out.votes[1:])) <= {-1, 0, 1} and set(np.unique(out.arm[1:])) == {0, 1}
    assert out.expected[1] > out.expected[0] and out.truth == 1


def test_analysis_structure_and_sanity(played):
    _, _, out, _ = played
    result = analyse(out, CFG, seed=0)
    curves, fs = result["power"], result["full_sample"]
    assert curves["users"] == sorted(curves["users"]) and all(len(curves[m]) == len(curves["users"]) for m in METHODS)
    for m in METHODS:
        power = np.asarray(curves[m])
        assert np.all((power >= 0) & (power <= 1))
        assert power[-1] >= power[0] and power[-1] >= CFG.power  # the oracle's gain is large: every method gets there
        assert result["users_needed"][m] is not None
    assert -0.05 <= fs["cuped_variance_reduction"] <= 1 and -1 <= fs["corr_pre_post"] <= 1
    assert fs["ci95_width_cuped"] > 0 and fs["ci_narrower_with_cuped"] < 1
    assert fs["ctr_b"] > fs["ctr_a"] and fs["true_relative_gain"] > 0


def test_no_gain_is_never_credited():
    sim = tiny_world()
    histories = initial_histories(sim)
    rank = oracle_ranker(sim)
    pre = play_pre(sim, rank, histories, CFG, seed=1)[:2]
    out = play_experiment(sim, rank, Frozen(rank), Frozen(rank), histories, pre, CFG, seed=1)
    assert out.expected[0] == out.expected[1] and out.truth == 0
    result = analyse(out, CFG, seed=1)
    assert all(max(result["power"][m]) == 0 for m in METHODS) and result["ab_over_interleaving"] is None


def test_users_at_power_interpolates_in_log_users():
    assert users_at_power([10, 100], [0.0, 1.0], 0.5) == pytest.approx(np.sqrt(10 * 100))
    assert users_at_power([10, 100], [0.9, 1.0], 0.8) == 10
    assert users_at_power([10, 100], [0.1, 0.5], 0.8) is None


def test_arms_are_a_stable_roughly_even_split():
    arms = [arm_of(u, "power-0") for u in range(1, 2001)]
    assert arms == [arm_of(u, "power-0") for u in range(1, 2001)] and 0.45 < np.mean(arms) < 0.55
    assert arms != [arm_of(u, "power-1") for u in range(1, 2001)]


def test_b_learns_from_every_click_of_every_round(played):
    _, rows, out, (pre_b, b_ab, b_il) = played
    assert len(pre_b.rounds) == CFG.pre_rounds and set(rows) <= set(sum(pre_b.rounds, []))  # clicks + browsed
    browsed = len(sum(pre_b.rounds, [])) - len(rows)
    assert 0 < browsed < len(pre_b.rounds) * 60 * 0.5  # about browse_share (0.2) of the 60 users' requests
    assert len(b_ab.rounds) == len(b_il.rounds) == CFG.rounds
    assert sum(map(len, b_ab.rounds)) > out.ab_clicks.sum()  # both arms' clicks, A's included, and browsed items
    assert all(len({t for _, _, t in r}) <= 1 for r in b_ab.rounds + b_il.rounds)  # one round at a time
    assert sum(map(len, b_il.rounds)) > 0
