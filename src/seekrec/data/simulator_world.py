"""The simulator's hidden world: items, user profiles, timelines, seeded drift paths, and samplers.

Kept apart from ``simulator.py`` so that the behaviour model there reads on its own; the world is a
pure function of the config and its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtri

from seekrec.data.simulator_text import genre_names, make_titles

if TYPE_CHECKING:
    from seekrec.data.simulator import SimulatorConfig

KNOTS_PER_DAY = 24  # drift paths are sampled hourly (in drift time) and linear in between
_BLOCK = 256  # knots per independently seeded block of a drift path
AGE_BUCKETS = np.array([1, 18, 25, 35, 45, 50, 56], dtype=np.int32)  # MovieLens-1M age codes
_AGE_WEIGHTS = np.array([0.04, 0.18, 0.35, 0.20, 0.09, 0.08, 0.06])
_GENRE_MIX = np.array([1.0, 0.6, 0.4])  # weight of an item's (a user's) first, second, third genre
# One SeedSequence child per purpose, so changing one part never shifts another part's draws.
ITEMS, USER, TIMELINE, CHOICES, TREND, USER_WALK, LIVE, RELEASES = range(8)


def stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of one purpose (and optionally one user or block): ``SeedSequence(seed)`` child ``key``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class GroundTruth:
    """The hidden world a recommender has to infer; item arrays have a padding row 0."""

    item_vecs: np.ndarray  # [N + 1, D] float32 unit vectors, clustered by genre
    popularity_bias: np.ndarray  # [N + 1] float32, -popularity_exponent * log(rank); 0 for the top item
    item_genres: np.ndarray  # [N + 1, 3] int64 genre indices, -1 where an item has fewer genres
    follow_ups: np.ndarray  # [N + 1, F] int64 hidden sequels of each item (distinct, never the item)
    genre_centroids: np.ndarray  # [G, D] unit vectors
    age_directions: np.ndarray  # [7, D] taste shift of each age bucket, so age helps cold start
    genre_names: list[str]
    titles: list[str]  # [N]
    years: np.ndarray  # [N] int32


@dataclass(frozen=True)
class Profiles:
    """What a user is at sign-up; rows follow the ids they were drawn for."""

    direction: np.ndarray  # [U, D] unit initial taste direction
    strength: np.ndarray  # [U] taste length
    age: np.ndarray  # [U] int32 age bucket
    activity: np.ndarray  # [U] expected number of history events


def build_world(cfg: SimulatorConfig) -> GroundTruth:
    """Items clustered by genre with Zipf popularity (random ranks), sequels, titles and years."""
    n, g, d = cfg.n_items, cfg.n_genres, cfg.dim
    rng = stream(cfg.seed, ITEMS)
    centroids = unit(rng.standard_normal((g, d)))
    keys = np.log(_genre_weights(g)) + rng.gumbel(size=(n, g))  # Gumbel top-3: distinct genres by size
    ranked = np.argsort(-keys, axis=1, kind="stable")[:, :3]
    k = np.minimum(rng.choice(3, size=n, p=[0.5, 0.35, 0.15]) + 1, g)
    genres = np.where(np.arange(ranked.shape[1]) < k[:, None], ranked, -1)
    mix = np.where(genres >= 0, _GENRE_MIX[: genres.shape[1]], 0.0)
    vecs = np.einsum("nk,nkd->nd", mix, centroids[np.maximum(genres, 0)])
    vecs = unit(vecs + 0.6 * rng.standard_normal((n, d)) / math.sqrt(d))
    bias = -cfg.popularity_exponent * np.log(rng.permutation(n) + 1.0)
    follow_ups = _follow_ups(genres[:, 0], cfg.n_follow_ups, rng)
    years = (2025 - np.minimum(rng.exponential(14.0, size=n), 100.0)).astype(np.int32)
    titles = make_titles(genres[:, 0], years, rng.random((n, 5)))
    age_dirs = unit(rng.standard_normal((len(AGE_BUCKETS), d)))
    padded = np.concatenate([np.full((1, genres.shape[1]), -1), genres]).astype(np.int64)
    return GroundTruth(
        item_vecs=np.concatenate([np.zeros((1, d)), vecs]).astype(np.float32),
        popularity_bias=np.concatenate([[0.0], bias]).astype(np.float32),
        item_genres=padded, follow_ups=follow_ups, genre_centroids=centroids, age_directions=age_dirs,
        genre_names=genre_names(g), titles=titles, years=years,
    )


def release_items(cfg: SimulatorConfig, truth: GroundTruth) -> GroundTruth:
    """``truth`` plus ``cfg.live_new_items`` items released after the history, ids ``N+1..N+M``.

    Drawn from their own stream, so the history's world is the same with or without releases. New
    items look like the catalog (genre-clustered vectors, titles, this year's release) but carry
    ``new_item_bias`` as popularity, as new releases draw attention; their sequels are catalog items
    of their primary genre.
    """
    m, g, d, n = cfg.live_new_items, cfg.n_genres, cfg.dim, cfg.n_items
    if m == 0:
        return truth
    rng = stream(cfg.seed, RELEASES)
    keys = np.log(_genre_weights(g)) + rng.gumbel(size=(m, g))
    ranked = np.argsort(-keys, axis=1, kind="stable")[:, :3]
    k = np.minimum(rng.choice(3, size=m, p=[0.5, 0.35, 0.15]) + 1, g)
    genres = np.where(np.arange(ranked.shape[1]) < k[:, None], ranked, -1)
    mix = np.where(genres >= 0, _GENRE_MIX[: genres.shape[1]], 0.0)
    vecs = unit(np.einsum("mk,mkd->md", mix, truth.genre_centroids[np.maximum(genres, 0)])
                + 0.6 * rng.standard_normal((m, d)) / math.sqrt(d))
    primary = truth.item_genres[1:, 0]
    follow_ups = np.zeros((m, cfg.n_follow_ups), np.int64)
    for row, genre in enumerate(genres[:, 0].tolist()):
        pool = np.flatnonzero(primary == genre) + 1
        pool = pool if len(pool) >= cfg.n_follow_ups else np.arange(1, n + 1)
        follow_ups[row] = rng.choice(pool, size=cfg.n_follow_ups, replace=False)
    years = np.full(m, 2026, np.int32)
    titles = make_titles(genres[:, 0], years, rng.random((m, 5)))
    taken = set(truth.titles)
    titles = [t if t not in taken else f"{t} ({n + 1 + i})" for i, t in enumerate(titles)]
    return GroundTruth(
        item_vecs=np.concatenate([truth.item_vecs, vecs.astype(np.float32)]),
        popularity_bias=np.concatenate([truth.popularity_bias, np.full(m, cfg.new_item_bias, np.float32)]),
        item_genres=np.concatenate([truth.item_genres, genres.astype(np.int64)]),
        follow_ups=np.concatenate([truth.follow_ups, follow_ups]), genre_centroids=truth.genre_centroids,
        age_directions=truth.age_directions, genre_names=truth.genre_names, titles=[*truth.titles, *titles],
        years=np.concatenate([truth.years, years]),
    )


def draw_profiles(cfg: SimulatorConfig, truth: GroundTruth, user_ids: np.ndarray) -> Profiles:
    """Profiles keyed by (seed, user id): a user is the same person whatever n_users is.

    Taste direction = favourite genres (1-3, big genres likelier) + an age-bucket shift + noise;
    activity is lognormal with mean ``mean_events_per_user``.
    """
    g, d = cfg.n_genres, cfg.dim
    width = 4 + g + d
    # 32-bit words straight from each user's SeedSequence: cheap, and strictly inside (0, 1)
    words = [np.random.SeedSequence(cfg.seed, spawn_key=(USER, int(i))).generate_state(width) for i in user_ids]
    u = (np.array(words, dtype=np.float64).reshape(len(user_ids), width) + 0.5) / 2.0**32
    age = np.minimum(np.searchsorted(np.cumsum(_AGE_WEIGHTS), u[:, 0]), len(AGE_BUCKETS) - 1)
    mu = math.log(cfg.mean_events_per_user) - cfg.activity_sigma**2 / 2  # keeps the lognormal mean
    activity = np.exp(mu + cfg.activity_sigma * ndtri(u[:, 1]))
    gumbel_keys = np.log(_genre_weights(g)) - np.log(-np.log(u[:, 4 : 4 + g]))
    fav = np.argsort(-gumbel_keys, axis=1, kind="stable")[:, :3]
    k = np.minimum(1 + (u[:, 3] * 3).astype(np.int64), g)
    mix = np.where(np.arange(fav.shape[1]) < k[:, None], _GENRE_MIX[: fav.shape[1]], 0.0)
    direction = (np.einsum("uk,ukd->ud", mix, truth.genre_centroids[fav]) + 0.5 * truth.age_directions[age]
                 + 0.5 * ndtri(u[:, 4 + g :]) / math.sqrt(d))
    return Profiles(unit(direction), cfg.taste_strength * (0.75 + 0.5 * u[:, 2]), AGE_BUCKETS[age], activity)


def timeline(cfg: SimulatorConfig, counts: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Timestamps [E], user-major in the order of ``counts`` (``first`` = each user's first row).

    Sessions have geometric lengths; gaps are exponential within and between sessions, at least one
    second so a user's timestamps strictly increase; users join uniformly over the join window.
    """
    rng = stream(cfg.seed, TIMELINE)
    total = int(counts.sum())
    new_session = rng.random(total) < 1.0 / cfg.session_length
    within, between = rng.exponential(cfg.event_gap_seconds, total), rng.exponential(cfg.session_gap_seconds, total)
    gaps = 1 + np.floor(np.where(new_session, between, within)).astype(np.int64)
    gaps[first] = np.floor(rng.random(len(counts)) * cfg.join_window_seconds).astype(np.int64)
    ts = np.cumsum(gaps)
    return cfg.start_timestamp + ts - np.repeat(ts[first] - gaps[first], counts)


def member(cand: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """Which candidates [m, K] appear in each row's recent items [m, W] (0 never matches an item)."""
    return (cand[:, :, None] == recent[:, None, :]).any(axis=2)


def pick(cand: np.ndarray, logit: np.ndarray, blocked: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One candidate per row with probability softmax(logit) (Gumbel-max), skipping blocked ones unless
    nothing else is left in the row; an empty slot (id 0) is never picked: [m, K] each -> [m]."""
    allowed = ~blocked & (cand > 0)
    allowed = np.where(allowed.any(axis=1, keepdims=True), allowed, cand > 0)
    logit = np.where(allowed, logit, -np.inf)
    return cand[np.arange(len(cand)), np.argmax(logit + rng.gumbel(size=logit.shape), axis=1)]


def rank_fresh(item_vecs: np.ndarray, popularity: AliasSampler, query: np.ndarray, shape: tuple[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """Fresh picks per query row [e, R], best first, among K popularity-drawn candidates: ``shape = (K, R)``.

    Popularity enters through the proposal, so a candidate's weight is ``exp(query . v)`` alone
    (sampling-importance-resampling of the multinomial logit). Exponential races order the picks as
    a draw without replacement, so "the first pick that is not a recent item" is an exact draw from
    the candidates without the recent items.
    """
    n_cand, n_ranked = shape
    cand = popularity.sample(rng, (len(query), n_cand))
    affinity = np.matmul(np.take(item_vecs, cand, axis=0), query[:, :, None])[..., 0]  # [e, K]
    arrival = np.maximum(rng.standard_exponential(cand.shape, dtype=np.float32), np.finfo(np.float32).tiny)
    race = np.log(arrival) - affinity
    rows = np.arange(len(query))
    out = np.empty((len(query), n_ranked), np.int64)
    for r in range(n_ranked):
        best = np.argmin(race, axis=1)
        out[:, r] = cand[rows, best]
        race[rows, best] = np.inf
    return out


class AliasSampler:
    """O(1) draws from a fixed categorical over ids ``1..N`` (Vose's alias method)."""

    def __init__(self, weights: np.ndarray) -> None:
        n = len(weights)
        prob = (np.asarray(weights, dtype=np.float64) * n / np.sum(weights)).tolist()
        alias = [0] * n
        small = [i for i, p in enumerate(prob) if p < 1.0]
        large = [i for i, p in enumerate(prob) if p >= 1.0]
        while small and large:
            s, big = small.pop(), large.pop()
            alias[s] = big
            prob[big] -= 1.0 - prob[s]
            (small if prob[big] < 1.0 else large).append(big)
        for i in small + large:  # what is left is 1 up to rounding
            prob[i] = 1.0
        self._prob, self._alias = np.array(prob), np.array(alias, dtype=np.int32) + 1

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """int32 ids in ``1..N``; one uniform per draw: its integer part picks a column, its fraction the side."""
        x = rng.random(shape) * len(self._prob)
        col = np.minimum(x.astype(np.int32), len(self._prob) - 1)
        return np.where(x - col < self._prob[col], col + 1, self._alias[col])


class BrownianPath:
    """Seeded D-dim Brownian motion B(0) = 0 over drift days: hourly knots, linear in between.

    Every block of knots has its own seed, so a point far in the future costs one sum per earlier
    block rather than the whole path in memory; ``dense`` keeps every knot for many queries.
    """

    def __init__(self, seed: int, key: tuple[int, ...], dim: int, dense: bool = False) -> None:
        self._seed, self._key, self._dim, self._dense = seed, key, dim, dense
        self._starts = [np.zeros(dim)]  # B at the first knot of each block
        self._knots = np.zeros((1, dim))  # with dense: knots 0 .. b * _BLOCK
        self._recent: tuple[int, np.ndarray] | None = None  # the last block table built: live queries reuse it

    def _steps(self, block: int) -> np.ndarray:
        return stream(self._seed, *self._key, block).standard_normal((_BLOCK, self._dim)) / math.sqrt(KNOTS_PER_DAY)

    def _table(self, block: int) -> np.ndarray:
        """Knots ``block * _BLOCK`` to ``(block + 1) * _BLOCK`` inclusive: [_BLOCK + 1, D]."""
        if self._recent is not None and self._recent[0] == block:
            return self._recent[1]
        while len(self._starts) <= block:
            self._starts.append(self._starts[-1] + self._steps(len(self._starts) - 1).sum(0))
        table = self._starts[block] + np.concatenate([np.zeros((1, self._dim)), np.cumsum(self._steps(block), 0)])
        self._recent = (block, table)
        return table

    def at(self, days: np.ndarray) -> np.ndarray:
        """B at ``days`` (negative days read as 0): [n] -> [n, D]."""
        pos = np.maximum(np.asarray(days, dtype=np.float64), 0.0) * KNOTS_PER_DAY
        knot = np.floor(pos).astype(np.int64)
        frac = (pos - knot)[:, None]
        if self._dense:
            while len(self._knots) < knot.max(initial=0) + 2:  # len is b * _BLOCK + 1: append block b
                self._knots = np.concatenate([self._knots[:-1], self._table(len(self._knots) // _BLOCK)])
            return self._knots[knot] * (1.0 - frac) + self._knots[knot + 1] * frac
        block, offset = np.divmod(knot, _BLOCK)
        out = np.empty((len(pos), self._dim))
        for b in np.unique(block).tolist():
            sel = block == b
            table, off = self._table(b), offset[sel]
            out[sel] = table[off] * (1.0 - frac[sel]) + table[off + 1] * frac[sel]
        return out


class Drift:
    """Tastes and the population trend over drift days; the history and live mode share these formulas."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        self._cfg = cfg
        self._trend_path = BrownianPath(cfg.seed, (TREND, 1), cfg.dim, dense=True)
        self._trend_start = unit(stream(cfg.seed, TREND).standard_normal(cfg.dim))
        self._user_paths: dict[int, BrownianPath] = {}

    def taste(self, direction: np.ndarray, strength: np.ndarray, walk: np.ndarray) -> np.ndarray:
        """strength * unit(direction + drift_per_day * walk / sqrt(D)): a random walk of fixed length, [n, D]."""
        scale = self._cfg.drift_per_day / math.sqrt(self._cfg.dim)
        return strength[:, None] * unit(direction + scale * walk)

    def trend(self, days: np.ndarray) -> np.ndarray:
        """Population-wide taste direction at drift ``days``: [n] -> [n, D] unit vectors."""
        scale = self._cfg.trend_drift_per_day / math.sqrt(self._cfg.dim)
        return unit(self._trend_start + scale * self._trend_path.at(days))

    def user_walk(self, user_id: int, days: float) -> np.ndarray:
        """How far ``user_id``'s walk moves in ``days`` of drift after their anchor (0 if days <= 0): [D]."""
        if days <= 0 or self._cfg.drift_per_day == 0:
            return np.zeros(self._cfg.dim)
        if user_id not in self._user_paths:
            self._user_paths[user_id] = BrownianPath(self._cfg.seed, (USER_WALK, user_id), self._cfg.dim)
        return self._user_paths[user_id].at(np.array([days]))[0]


def check_user(user_id: int) -> int:
    """``user_id`` as an int, or a ValueError: simulated ids are integers >= 1."""
    if isinstance(user_id, bool) or not isinstance(user_id, (int, np.integer)) or user_id < 1:
        raise ValueError(f"user_id={user_id!r}: simulated user ids are integers >= 1")
    return int(user_id)


def check_items(items: Sequence[int] | np.ndarray, n_items: int) -> np.ndarray:
    """``items`` as int64 [K], or a ValueError naming the first id outside ``1..n_items``."""
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    bad = (items < 1) | (items > n_items)
    if bad.any():
        raise ValueError(f"item id {int(items[bad][0])} is outside 1..{n_items}: slates hold simulated item ids")
    return items


def _genre_weights(n_genres: int) -> np.ndarray:
    """A few big genres (drama, comedy) and many niche ones, like real catalogs."""
    return np.arange(1, n_genres + 1, dtype=np.float64) ** -0.7


def _follow_ups(primary: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct sequels per item [N + 1, k] from its primary genre (any item if the genre is too small)."""
    n = len(primary)
    out = np.zeros((n + 1, k), np.int64)
    for genre in np.unique(primary).tolist():
        members = np.flatnonzero(primary == genre) + 1
        pool = members if len(members) > k else np.arange(1, n + 1)
        offsets = rng.integers(1, len(pool), size=(len(members), k))  # never 0, so never the item itself
        while (dup := (np.diff(np.sort(offsets, axis=1), axis=1) == 0).any(axis=1)).any():
            offsets[dup] = rng.integers(1, len(pool), size=(int(dup.sum()), k))
        out[members] = pool[(np.searchsorted(pool, members)[:, None] + offsets) % len(pool)]
    return out
