"""Seeded behaviour simulator: synthetic users and items with a hidden ground truth.

The hidden world (``GroundTruth``): unit item vectors clustered by genre, a power-law popularity
bias ``b_i = -popularity_exponent * log(rank_i)``, and ``n_follow_ups`` hidden "sequels" per item
(drawn from its genre, not from its vector, so only models of order can learn them). A user has a
taste vector of fixed length that random-walks over time; all users also share a drifting trend.

History: at each event a user re-consumes a recent item (share ``repeat_prob``), takes a sequel of
the last item (share ``follow_up_prob``) or picks a fresh item. Every pick is a multinomial logit
over the same utility ``query . v_i + b_i`` that ``click_logit`` scores; fresh picks draw
``candidates_per_step`` items by popularity and choose among them by taste (sampling-importance-
resampling), so popularity and taste both shape the data without an [users x items] matrix.

Live mode (``respond``) shows a slate; a user examines position k with probability
``(1 + k) ** -position_bias`` and clicks an examined item with ``sigmoid(click_logit(...))``.
Users also find items on their own (``browse``: search, a friend's tip), among them the new items
released during live time, which no model trained on the history knows.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
from scipy.special import expit

from seekrec.data.schema import IdMap, InteractionData, build_events
from seekrec.data.simulator_world import (
    CHOICES, LIVE, AliasSampler, Drift, GroundTruth, Profiles, build_world, check_items, check_user, draw_profiles,
    member, pick, rank_fresh, release_items, stream, timeline,
)

SECONDS_PER_DAY = 86_400
_FRESH, _FOLLOW, _REPEAT = range(3)  # the kind of a history event
_RANKED = 4  # fresh picks ranked per event, so a pick that is a recent item has stand-ins
_CHUNK = 1 << 15  # events whose tastes and fresh picks are drawn in one vectorised batch
_MAX_ACTIVITY = 15  # cap on a user's history length, in multiples of mean_events_per_user
_INT_FIELDS = {"n_users": 1, "n_items": 1, "n_genres": 1, "dim": 1, "min_events_per_user": 1, "candidates_per_step": 1,
               "repeat_window": 1, "n_follow_ups": 1, "start_timestamp": 0, "seed": 0, "live_new_items": 0}
_FLOAT_FIELDS = {"mean_events_per_user": 1.0, "session_length": 1.0, "activity_sigma": 0.0, "popularity_exponent": 0.0,
                 "taste_strength": 0.0, "event_gap_seconds": 0.0, "session_gap_seconds": 0.0,
                 "join_window_seconds": 0.0, "drift_per_day": 0.0, "trend_weight": 0.0, "trend_drift_per_day": 0.0,
                 "live_time_scale": 0.0, "position_bias": 0.0, "repeat_prob": 0.0, "follow_up_prob": 0.0,
                 "base_logit": -math.inf, "release_every_seconds": 0.0, "new_item_bias": -math.inf}


@dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the synthetic world; times are Unix seconds, drift rates per day of drift time.

    Attributes:
        n_users, n_items, n_genres, dim: world size; ``dim`` is the latent dimension D.
        mean_events_per_user: mean history length; lengths are lognormal with ``activity_sigma``
            (heavy-tailed: a few users are very active), at least ``min_events_per_user``.
        popularity_exponent: Zipf exponent of item popularity (0 = all items equally popular).
        taste_strength: length of a taste vector, i.e. how much taste outweighs popularity.
        candidates_per_step: popularity-drawn items a user weighs per fresh pick; more means
            choices follow taste more closely (the full multinomial logit as it grows).
        session_length: mean events per session (geometric); ``event_gap_seconds`` and
            ``session_gap_seconds`` are the mean (exponential) gaps within and between sessions;
            users join uniformly over ``join_window_seconds`` after ``start_timestamp``.
        repeat_prob: share of events that re-consume one of the last ``repeat_window`` items.
        follow_up_prob: share of events that take one of the ``n_follow_ups`` hidden sequels of
            the previous item: the order a sequence model can learn and EASE cannot.
        drift_per_day: how far a taste direction wanders in one drift day, relative to its
            length; displacement grows like sqrt(days).
        trend_weight, trend_drift_per_day: a population-wide taste shared by all users (so what is
            popular changes) and its drift rate; ``trend_weight = 0`` turns it off.
        live_time_scale: drift-time seconds per second after the generated history ends. The
            history runs on real time; a live A/B run can compress time so drift is material in
            minutes: with ``drift_per_day=0.05`` and ``live_time_scale=28_800`` five minutes are
            100 drift days, which moves tastes by about half their length.
        position_bias: examination falls as ``(1 + position) ** -position_bias`` in live slates.
        base_logit: shifts every live click probability (sets the overall click-through rate).
        live_new_items, release_every_seconds, new_item_bias: items released after the history
            (ids ``n_items + 1 ..``), one every ``release_every_seconds`` of live time, with popularity
            logit ``new_item_bias`` (0 = as popular as the top item); users find them by ``browse``.
        seed: the only source of randomness.
    """

    n_users: int = 1000
    n_items: int = 500
    n_genres: int = 18
    dim: int = 16
    mean_events_per_user: float = 50.0
    activity_sigma: float = 1.0
    min_events_per_user: int = 5
    popularity_exponent: float = 0.7
    taste_strength: float = 5.0
    candidates_per_step: int = 32
    session_length: float = 8.0
    event_gap_seconds: float = 240.0
    session_gap_seconds: float = 172_800.0
    join_window_seconds: float = 2_592_000.0
    repeat_prob: float = 0.05
    repeat_window: int = 20
    follow_up_prob: float = 0.2
    n_follow_ups: int = 3
    drift_per_day: float = 0.05
    trend_weight: float = 1.0
    trend_drift_per_day: float = 0.1
    live_time_scale: float = 1.0
    position_bias: float = 1.0
    base_logit: float = -2.0
    live_new_items: int = 0
    release_every_seconds: float = 1.0
    new_item_bias: float = 0.0
    start_timestamp: int = 1_704_067_200  # 2024-01-01 UTC
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in _INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"SimulatorConfig.{name}={value!r}: set it to an integer >= {low}")
        for name, low in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) \
                    or value < low:
                bound = "" if low == -math.inf else f" >= {low}"
                raise ValueError(f"SimulatorConfig.{name}={value!r}: set it to a finite number{bound}")
        if self.live_time_scale <= 0:
            raise ValueError(f"SimulatorConfig.live_time_scale={self.live_time_scale!r}: set it to a number > 0 "
                             "(1 = live time runs like the history's)")
        if self.repeat_prob + self.follow_up_prob > 1:
            raise ValueError(f"SimulatorConfig.repeat_prob + follow_up_prob = {self.repeat_prob + self.follow_up_prob}"
                             " > 1: lower one of them (they are shares of all events)")
        if self.n_follow_ups >= self.n_items:
            raise ValueError(f"SimulatorConfig.n_follow_ups={self.n_follow_ups} must be < n_items={self.n_items}: "
                             "lower it or add items")
        if self.mean_events_per_user < self.min_events_per_user:
            raise ValueError(f"SimulatorConfig.mean_events_per_user={self.mean_events_per_user} is below "
                             f"min_events_per_user={self.min_events_per_user}: raise the mean or lower the minimum")

    @property
    def follow_up_logit(self) -> float:
        """Live bonus for a sequel of the last item: the odds against a fresh item it has in the history.

        In the history a given sequel gets ``follow_up_prob / n_follow_ups`` of the choice mass and a
        given fresh item ``fresh / n_items`` (for typical utilities); the log of their ratio is the
        constant multinomial-logit bonus that reproduces that share on average.
        """
        return _share_logit(self.follow_up_prob, self._fresh_prob, self.n_items / self.n_follow_ups)

    @property
    def repeat_logit(self) -> float:
        """Live bonus (or penalty) for one of the last ``repeat_window`` items, derived like ``follow_up_logit``."""
        return _share_logit(self.repeat_prob, self._fresh_prob, self.n_items / self.repeat_window)

    @property
    def _fresh_prob(self) -> float:
        return 1.0 - self.repeat_prob - self.follow_up_prob


def _share_logit(share: float, fresh: float, items_ratio: float) -> float:
    # a share of 0 gives a large finite penalty rather than -inf, so sigmoid stays well defined
    return math.log(max(share, 1e-9)) - math.log(max(fresh, 1e-9)) + math.log(items_ratio)


def click_logit(
    config: SimulatorConfig,
    query: np.ndarray,
    item_vecs: np.ndarray,
    popularity_bias: np.ndarray,
    *,
    follow_up: np.ndarray,
    recent: np.ndarray,
) -> np.ndarray:
    """Logit of P(click | examined) for one user and N items: [D], [N, D], [N], [N] bool, [N] bool -> [N].

    ``base_logit + query . v_i + b_i + follow_up_logit * [i is a sequel of the user's last item]
    + repeat_logit * [i is among the user's recent items]``, where ``query = taste(u, t) +
    trend_weight * trend(t)``. The history samples choices from the same utility (see the module doc).
    """
    return (config.base_logit + item_vecs @ query + popularity_bias
            + config.follow_up_logit * follow_up + config.repeat_logit * recent)


@dataclass(frozen=True)
class _History:
    users: np.ndarray  # [E] event log in time order
    items: np.ndarray
    timestamps: np.ndarray
    # state after each user's last event, indexed by user id (row 0 unused): where live mode starts
    profiles: Profiles
    walk: np.ndarray  # [U + 1, D] taste random walk
    last_time: np.ndarray  # [U + 1]
    recent: np.ndarray  # [U + 1, W] last items, oldest first, 0-padded on the left
    counts: np.ndarray  # [U + 1]
    end: int  # last timestamp of the history; live_time_scale applies after it


@dataclass
class _Memory:
    last: int
    recent: deque[int]


class Simulator:
    """Generates a seeded interaction history and answers live slates from the same hidden world.

    ``generate()`` is deterministic in the config; ``respond`` continues from each user's state at
    the end of that history (computed on first use), and any user id > n_users is a new user whose
    taste depends only on the seed and the id. Tastes drift as a pure function of ``t``.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._drift = Drift(config)
        self._new_users: dict[int, Profiles] = {}
        self._memory: dict[int, _Memory] = {}
        self._live_rng = stream(config.seed, LIVE)

    @cached_property
    def truth(self) -> GroundTruth:
        """Item vectors, genres, popularity, sequels, titles: drawn once from the seed."""
        return build_world(self.config)

    @cached_property
    def live_truth(self) -> GroundTruth:
        """``truth`` plus the items released in live time (``live_new_items``); the history never sees them."""
        return release_items(self.config, self.truth)

    @cached_property
    def _popularity(self) -> AliasSampler:
        return AliasSampler(np.exp(self.truth.popularity_bias[1:].astype(np.float64)))

    # ----- history ------------------------------------------------------------------------------
    def generate(self) -> InteractionData:
        """The canonical tables of the simulated history; raw ids are 1..n, so the id maps are the identity.

        events: one ``click`` (value 1) per history event, in time order; items: title, genres, year;
        users: ``age`` (MovieLens age code, which shifts taste) and ``segment`` (light / regular /
        heavy by history length).
        """
        cfg, truth, h = self.config, self.truth, self._history
        events = build_events(h.users, h.items, h.timestamps, np.ones(len(h.items), np.float32), "click")
        names = truth.genre_names
        items = pa.table({
            "item_id": pa.array(np.arange(1, cfg.n_items + 1), pa.int64()),
            "title": pa.array(truth.titles, pa.string()),
            "genres": pa.array([[names[x] for x in row if x >= 0] for row in truth.item_genres[1:].tolist()],
                               pa.list_(pa.string())),
            "year": pa.array(truth.years, pa.int32()),
        })
        counts, mean = h.counts[1:], cfg.mean_events_per_user
        segment = np.where(counts < mean / 2, "light", np.where(counts > 2 * mean, "heavy", "regular"))
        users = pa.table({
            "user_id": pa.array(np.arange(1, cfg.n_users + 1), pa.int64()),
            "age": pa.array(h.profiles.age, pa.int32()),
            "segment": pa.array(segment.tolist(), pa.string()),
        })
        user_ids, item_ids = IdMap(np.arange(1, cfg.n_users + 1)), IdMap(np.arange(1, cfg.n_items + 1))
        return InteractionData(events, items, users, user_ids, item_ids, source="simulator",
                               options={"simulator": dataclasses.asdict(cfg)})

    @cached_property
    def _history(self) -> _History:
        """Simulate every user at once, one event index ("step") at a time, heaviest users first.

        Whatever does not depend on earlier choices (timestamps, tastes, the kind of each event,
        ranked fresh picks) is drawn up front, vectorised; the loop only resolves sequels, repeats
        and the "not a recent item" rule. Events are laid out step-major: as the users still active
        at a step are a prefix of the heaviest-first order, each step is one contiguous slice.
        """
        cfg, truth = self.config, self.truth
        n, window = cfg.n_users, cfg.repeat_window
        prof = draw_profiles(cfg, truth, np.arange(1, n + 1))
        cap = max(cfg.min_events_per_user, math.ceil(_MAX_ACTIVITY * cfg.mean_events_per_user))
        counts = np.clip(np.rint(prof.activity), cfg.min_events_per_user, cap).astype(np.int64)
        order = np.argsort(-counts, kind="stable")
        c = counts[order]
        first = np.cumsum(c) - c  # user-major layout: row r's events are first[r] .. first[r] + c[r] - 1
        ts = timeline(cfg, c, first)
        active = np.searchsorted(-c, -np.arange(c[0]), side="left")  # users with more than j events
        start = np.cumsum(active) - active  # step-major layout: step j is start[j] .. start[j] + active[j] - 1
        step = np.repeat(np.arange(len(active)), active)
        to_step_major = start[np.arange(len(ts)) - np.repeat(first, c)] + np.repeat(np.arange(n), c)
        rng = stream(cfg.seed, CHOICES)
        u, p_r, p_f = rng.random(len(ts)), cfg.repeat_prob, cfg.follow_up_prob
        kind = np.where((u < p_r) & (step >= 2), _REPEAT,  # >= 2: something besides the last item to repeat
                        np.where((u >= p_r) & (u < p_r + p_f) & (step >= 1), _FOLLOW, _FRESH))
        ranked, queries, qrow, walk_end = self._draw_ahead(prof, order, c, first, ts, to_step_major, kind, rng)
        recent = np.zeros((n, window), np.int64)  # ring buffer per user: step j writes column j % window
        items = np.empty(len(ts), np.int64)
        for j, (s0, m) in enumerate(zip(start.tolist(), active.tolist())):
            last = recent[:m, (j - 1) % window] if j else np.zeros(m, np.int64)
            chosen = np.empty(m, np.int64)
            rows = np.flatnonzero(kind[s0 : s0 + m] == _FRESH)
            picks = ranked[s0 + rows]
            hit = np.flatnonzero((recent[rows] == picks[:, :1]).any(axis=1))  # best pick is a recent item
            first_free = np.argmax(~member(picks[hit], recent[rows[hit]]), axis=1)
            chosen[rows] = picks[:, 0]
            chosen[rows[hit]] = picks[hit, first_free]
            for rows, cand, blocked in self._sequels_and_repeats(kind[s0 : s0 + m], last, recent[:m]):
                query = queries[qrow[s0 + rows]]
                logit = np.matmul(truth.item_vecs[cand], query[:, :, None])[..., 0] + truth.popularity_bias[cand]
                chosen[rows] = pick(cand, logit, blocked, rng)
            items[s0 : s0 + m] = chosen
            recent[:m, j % window] = chosen
        users = np.repeat(order + 1, c)
        items = items[to_step_major]
        log_order = np.lexsort((users, ts))
        oldest_first = recent[np.arange(n)[:, None], (c[:, None] + np.arange(window)) % window]
        by_id = np.zeros(n + 1, np.int64)  # row 0 (padding) reads the first user's row; nothing uses it
        by_id[order + 1] = np.arange(n)
        return _History(
            users=users[log_order], items=items[log_order], timestamps=ts[log_order], profiles=prof,
            walk=walk_end[by_id], last_time=ts[first + c - 1][by_id], recent=oldest_first[by_id],
            counts=np.concatenate([[0], counts]), end=int(ts.max()),
        )

    def _draw_ahead(self, prof: Profiles, order: np.ndarray, c: np.ndarray, first: np.ndarray, ts: np.ndarray,
                    to_step_major: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Per event, in chunks of whole users (user-major): queries (taste + trend) and ranked fresh picks.

        Returns, step-major: ranked picks [E, R] (rows of fresh events), the queries of the other
        events [E', D] and each event's row in them [E]; and each user's taste walk at their last event [U, D].
        """
        cfg, d = self.config, self.config.dim
        ranked = np.zeros((len(ts), _RANKED), np.int64)
        keep = kind != _FRESH
        qrow = np.cumsum(keep) - 1
        queries = np.empty((int(keep.sum()), d), np.float32)
        walk_end = np.zeros((len(c), d))
        ends = first + c
        a = 0
        while a < len(c):
            b = max(a + 1, int(np.searchsorted(ends, first[a] + _CHUNK, side="right")))
            lo, hi, cc = first[a], ends[b - 1], c[a:b]
            local_first = first[a:b] - lo
            days = (ts[lo:hi] - cfg.start_timestamp) / SECONDS_PER_DAY
            walk = np.zeros((hi - lo, d))
            if cfg.drift_per_day > 0:
                dt = np.diff(days, prepend=days[0])
                dt[local_first] = 0.0  # a user's walk starts at 0 when they join
                walk = np.cumsum(np.sqrt(dt)[:, None] * rng.standard_normal((hi - lo, d)), axis=0)
                walk -= np.repeat(walk[local_first], cc, axis=0)
            rows = np.repeat(order[a:b], cc)
            query = self._drift.taste(prof.direction[rows], prof.strength[rows], walk)
            if cfg.trend_weight > 0:
                query += cfg.trend_weight * self._drift.trend(days)
            query = query.astype(np.float32)
            where, fresh = to_step_major[lo:hi], ~keep[to_step_major[lo:hi]]
            shape = (cfg.candidates_per_step, _RANKED)
            ranked[where[fresh]] = rank_fresh(self.truth.item_vecs, self._popularity, query[fresh], shape, rng)
            queries[qrow[where[~fresh]]] = query[~fresh]
            walk_end[a:b] = walk[local_first + cc - 1]
            a = b
        return ranked, queries, qrow, walk_end

    def _sequels_and_repeats(self, kind: np.ndarray, last: np.ndarray, recent: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
        """(rows, candidates, blocked) of the users taking a sequel of ``last`` and of those repeating."""
        rows = np.flatnonzero(kind == _FOLLOW)
        if len(rows):
            cand = self.truth.follow_ups[last[rows]]
            yield rows, cand, member(cand, recent[rows])
        rows = np.flatnonzero(kind == _REPEAT)
        if len(rows):
            cand = recent[rows]
            yield rows, cand, (cand == 0) | (cand == last[rows, None])

    # ----- tastes over time ---------------------------------------------------------------------
    def _drift_days(self, t: float) -> float:
        """Drift time of Unix time ``t``: real days in the history, ``live_time_scale`` times faster after it."""
        cfg, end = self.config, self._history.end
        return ((t - cfg.start_timestamp) + max(t - end, 0.0) * (cfg.live_time_scale - 1.0)) / SECONDS_PER_DAY

    @property
    def history_end(self) -> int:
        """Last timestamp of the generated history: live time (and ``live_time_scale``) starts here."""
        return self._history.end

    def trend(self, t: float) -> np.ndarray:
        """The population-wide taste direction at time ``t``: [D] unit vector."""
        return self._drift.trend(np.array([self._drift_days(t)]))[0]

    def taste(self, user_id: int, t: float) -> np.ndarray:
        """Hidden taste of ``user_id`` at time ``t`` [D]; before their last history event it is the taste there."""
        cfg, h = self.config, self._history
        user_id = check_user(user_id)
        if user_id <= cfg.n_users:
            prof, row, walk, anchor = h.profiles, user_id - 1, h.walk[user_id], float(h.last_time[user_id])
        else:  # a new user joins when the history ends, with a taste drawn from the seed and the id
            if user_id not in self._new_users:
                self._new_users[user_id] = draw_profiles(cfg, self.truth, np.array([user_id]))
            prof, row, walk, anchor = self._new_users[user_id], 0, np.zeros(cfg.dim), float(h.end)
        walk = walk + self._drift.user_walk(user_id, self._drift_days(t) - self._drift_days(anchor))
        return self._drift.taste(prof.direction[row : row + 1], prof.strength[row : row + 1], walk[None])[0]

    # ----- live mode ----------------------------------------------------------------------------
    def _peek_memory(self, user_id: int) -> _Memory:
        if user_id in self._memory:
            return self._memory[user_id]
        recent = [x for x in self._history.recent[user_id].tolist() if x] if user_id <= self.config.n_users else []
        return _Memory(recent[-1] if recent else 0, deque(recent, maxlen=self.config.repeat_window))

    def click_probabilities(self, user_id: int, items: Sequence[int] | np.ndarray, t: float) -> np.ndarray:
        """P(click | examined) of ``items`` for ``user_id`` at time ``t``: [K] in [0, 1]; changes nothing."""
        cfg, truth = self.config, self.live_truth
        items = check_items(items, cfg.n_items + cfg.live_new_items)
        memory = self._peek_memory(check_user(user_id))
        query = self.taste(user_id, t) + cfg.trend_weight * self.trend(t)
        sequels = truth.follow_ups[memory.last] if memory.last else np.zeros(0, np.int64)
        follow_up = (items[:, None] == sequels).any(axis=1)
        recent = (items[:, None] == np.array(memory.recent, dtype=np.int64)).any(axis=1)
        logit = click_logit(cfg, query, truth.item_vecs[items].astype(np.float64), truth.popularity_bias[items],
                            follow_up=follow_up, recent=recent)
        return expit(logit)

    def respond(self, user_id: int, slate: Sequence[int] | np.ndarray, t: float,
                rng: np.random.Generator | None = None) -> np.ndarray:
        """Clicks [K] bool on ``slate`` (position 0 first) shown at ``t``; clicked items enter the user's memory.

        Draws from the simulator's own seeded stream unless ``rng`` is given. Clicked items, in slate
        order, become the user's most recent items; the last one is the item whose sequels get a bonus.
        """
        user_id = check_user(user_id)
        slate = check_items(slate, self.config.n_items + self.config.live_new_items)
        p = self.click_probabilities(user_id, slate, t)
        examined = (1.0 + np.arange(len(slate))) ** -self.config.position_bias
        clicks = (self._live_rng if rng is None else rng).random(len(slate)) < p * examined
        self._remember(user_id, slate[clicks].tolist())
        return clicks

    def released(self, t: float) -> int:
        """How many live items are out at time ``t`` (ids ``n_items + 1 ..`` that many)."""
        cfg = self.config
        if cfg.live_new_items == 0 or t < self.history_end:
            return 0
        if cfg.release_every_seconds == 0:
            return cfg.live_new_items
        return min(cfg.live_new_items, int((t - self.history_end) // cfg.release_every_seconds) + 1)

    def browse(self, user_id: int, t: float, rng: np.random.Generator | None = None) -> int:
        """An item the user finds on their own at ``t`` (not from a slate); it enters their memory.

        A multinomial-logit choice over the same utility as clicks, among ``candidates_per_step``
        items drawn uniformly from what is out at ``t`` (catalog and releases), skipping recent items.
        """
        cfg, truth = self.config, self.live_truth
        user_id = check_user(user_id)
        rng = self._live_rng if rng is None else rng
        available = cfg.n_items + self.released(t)
        cand = rng.integers(1, available + 1, size=cfg.candidates_per_step)
        memory = self._peek_memory(user_id)
        query = self.taste(user_id, t) + cfg.trend_weight * self.trend(t)
        sequels = truth.follow_ups[memory.last] if memory.last else np.zeros(0, np.int64)
        logit = click_logit(cfg, query, truth.item_vecs[cand].astype(np.float64), truth.popularity_bias[cand],
                            follow_up=(cand[:, None] == sequels).any(axis=1), recent=np.zeros(len(cand), bool))
        blocked = (cand[:, None] == np.array(memory.recent, dtype=np.int64)).any(axis=1)
        item = int(pick(cand[None], logit[None], blocked[None], rng)[0])
        self._remember(user_id, [item])
        return item

    def _remember(self, user_id: int, items: list[int]) -> None:
        """Items the user just took, in order, become their most recent; the last one's sequels get a bonus."""
        memory = self._memory.setdefault(user_id, self._peek_memory(user_id))
        for item in items:
            memory.recent.append(item)
            memory.last = item
