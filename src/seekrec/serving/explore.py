"""Exploration: re-rank one request's top candidates so that items the model ranks just below the slate get shown.

A greedy recommender only ever learns about the items it already shows; exploration spends a little of each
slate on the model's next-best candidates. Everything here is FastAPI-free and works on one request at a
time: the predictor's ranked candidates (at least ``top_n`` of them) go in, the K positions to show come
out, with a flag per slot saying whether it was explored (an item outside the model's own top K), for the
impression log.

Policies (``ExploreMethod``):

- ``greedy``: the model's top K, unchanged.
- ``epsilon_greedy``: each of the K slots, with probability ``epsilon``, shows an item drawn uniformly from
  the model's ranks K..top_n-1 (not already shown) instead of the next greedy item.
- ``thompson``: per-item Beta posteriors of click-through, learnt from served impressions and clicks
  (``FeedbackCounts``), are sampled once per request; the model's top_n are ordered by
  ``log(sampled CTR) - rank_weight * log(1 + model rank)``. The model's order acts as a prior: an item the
  model ranks r must sample a CTR ``(1 + r) ** rank_weight`` times that of the model's first choice to
  overtake it. Ranks rather than raw scores keep the blend scale-free: dot-product logits, calibrated
  probabilities and popularity counts all give ranks, so one ``rank_weight`` means the same for every
  predictor kind. Ordering by the sampled CTR alone would give every user the same global order inside
  their top_n and throw away the model's personalisation there.

Randomness comes only from the ``np.random.Generator`` passed per request; ``request_rng`` derives one from
the settings' seed, the user and a request id, so a logged request can be replayed exactly.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


class ExploreMethod(str, Enum):
    GREEDY = "greedy"
    EPSILON_GREEDY = "epsilon_greedy"
    THOMPSON = "thompson"


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and math.isfinite(value)


@dataclass(frozen=True)
class ExploreSettings:
    """One arm's exploration policy.

    Attributes:
        method: ``greedy``, ``epsilon_greedy`` or ``thompson`` (see the module docstring).
        epsilon: epsilon-greedy's per-slot exploration probability, in [0, 1].
        top_n: the model's top candidates exploration may draw from; the predictor must return at least
            ``max(k, top_n)`` of them. A request with ``k >= top_n`` has nothing left to explore.
        seed: base of ``request_rng``; None draws every request's generator from OS entropy.
        prior_alpha, prior_beta: Thompson's Beta prior on an item's CTR (pseudo-clicks, pseudo-non-clicks);
            the default Beta(1, 20) has mean ~0.05, about a slate item's click-through in the demo.
        rank_weight: Thompson's trust in the model's order (0: order the top_n by sampled CTR alone).
    """

    method: ExploreMethod = ExploreMethod.GREEDY
    epsilon: float = 0.1
    top_n: int = 50
    seed: int | None = None
    prior_alpha: float = 1.0
    prior_beta: float = 20.0
    rank_weight: float = 1.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", ExploreMethod(self.method))
        except ValueError as exc:
            choices = ", ".join(m.value for m in ExploreMethod)
            raise ValueError(f"ExploreSettings.method={self.method!r}: set it to one of {choices}") from exc
        if not _is_number(self.epsilon) or not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"ExploreSettings.epsilon={self.epsilon!r}: set it to a number in [0, 1]")
        if isinstance(self.top_n, bool) or not isinstance(self.top_n, (int, np.integer)) or self.top_n < 1:
            raise ValueError(f"ExploreSettings.top_n={self.top_n!r}: set it to an integer >= 1 (the candidates "
                             "exploration may draw from; above the slate size k to explore at all)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or self.seed < 0):
            raise ValueError(f"ExploreSettings.seed={self.seed!r}: set it to an integer >= 0, or None for OS entropy")
        for name in ("prior_alpha", "prior_beta"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"ExploreSettings.{name}={value!r}: set it to a number > 0 (a Beta prior's "
                                 "pseudo-count)")
        if not _is_number(self.rank_weight) or self.rank_weight < 0:
            raise ValueError(f"ExploreSettings.rank_weight={self.rank_weight!r}: set it to a number >= 0")


def request_rng(seed: int | None, user_id: str, request_id: int | str) -> np.random.Generator:
    """The generator of one request: a pure function of (``seed``, ``user_id``, ``request_id``) when seeded.

    Hashing the user and the request id (a request counter, an event-log offset, a client's request id)
    into the seed sequence makes two requests draw independently and a logged request replayable.
    """
    if seed is None:
        return np.random.default_rng()
    digest = hashlib.sha256(f"{user_id}\x00{request_id}".encode()).digest()
    words = np.frombuffer(digest[:16], dtype=np.uint32).tolist()
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


@dataclass(frozen=True)
class ExploredSlate:
    """What to show: ``positions`` [K] index the request's candidate list, ``item_ids`` [K] are those
    candidates' ids, ``explored`` [K] flags slots holding an item outside the model's top K."""

    positions: np.ndarray
    item_ids: np.ndarray
    explored: np.ndarray

    @property
    def explored_positions(self) -> tuple[int, ...]:
        """Slate slots (0 first) that were explored, for the impression log."""
        return tuple(np.flatnonzero(self.explored).tolist())


class FeedbackCounts:
    """Impressions and clicks per integer item id, for Thompson's posteriors; safe to share between threads.

    Two int64 arrays indexed by item id (16 bytes per item) that double when a larger id arrives, up to
    ``max_items`` ids: memory is bounded by the catalogue, never by the traffic.
    """

    def __init__(self, n_items: int = 1024, *, max_items: int = 10_000_000) -> None:
        if n_items < 0 or max_items < 1 or n_items > max_items:
            raise ValueError(f"FeedbackCounts needs 0 <= n_items <= max_items and max_items >= 1, got "
                             f"n_items={n_items}, max_items={max_items}")
        self.max_items = max_items
        self._lock = threading.Lock()
        self._impressions = np.zeros(n_items + 1, dtype=np.int64)  # [N + 1], by item id
        self._clicks = np.zeros(n_items + 1, dtype=np.int64)

    def _ids(self, items: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(items, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > self.max_items):
            raise ValueError(f"FeedbackCounts: item ids must be in 0..{self.max_items} (max_items), got "
                             f"{int(ids.min())}..{int(ids.max())}; raise max_items for a larger catalogue")
        return ids

    def _grow(self, largest: int) -> None:
        """Under the lock: make room for id ``largest`` (doubling, so growth is amortised)."""
        size = len(self._impressions)
        if largest < size:
            return
        new = min(max(2 * size, largest + 1), self.max_items + 1)
        self._impressions = np.concatenate([self._impressions, np.zeros(new - size, np.int64)])
        self._clicks = np.concatenate([self._clicks, np.zeros(new - size, np.int64)])

    def record_impressions(self, items: Sequence[int] | np.ndarray) -> None:
        """One impression for each id in ``items`` (a served slate)."""
        ids = self._ids(items)
        if ids.size == 0:
            return
        with self._lock:
            self._grow(int(ids.max()))
            np.add.at(self._impressions, ids, 1)  # add.at: an id listed twice counts twice

    def record_click(self, item: int) -> None:
        """One click on ``item``."""
        ids = self._ids([item])
        with self._lock:
            self._grow(int(ids[0]))
            self._clicks[ids[0]] += 1

    def counts(self, items: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(clicks [C], impressions [C]) of ``items``; ids never recorded have zeros."""
        ids = self._ids(items)
        with self._lock:
            known = ids < len(self._impressions)
            clicks, impressions = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
            clicks[known], impressions[known] = self._clicks[ids[known]], self._impressions[ids[known]]
        return clicks, impressions

    def posterior(self, items: Sequence[int] | np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
        """Beta(clicks + alpha, impressions - clicks + beta) parameters of ``items``: ([C], [C]).

        Clicks beyond impressions (events with no counted impression) are clamped out of the non-clicks
        rather than making the second parameter fall below ``beta``."""
        clicks, impressions = self.counts(items)
        return clicks + alpha, np.maximum(impressions - clicks, 0) + beta


class ClickAttribution:
    """Turns served slates and later events into ``FeedbackCounts``: an event counts as a click only when its
    item was in the user's last served slate (organic finds are not evidence about a slate), once per slot.

    Remembers the last slate of at most ``max_users`` users (least recently served forgotten first); a new
    slate for a user replaces the previous one. Thread-safe."""

    def __init__(self, counts: FeedbackCounts, *, max_users: int = 100_000) -> None:
        if max_users < 1:
            raise ValueError(f"ClickAttribution.max_users={max_users}: set it to an integer >= 1")
        self.counts, self.max_users = counts, max_users
        self._lock = threading.Lock()
        self._slates: OrderedDict[str, set[int]] = OrderedDict()  # user -> shown ids not clicked yet

    def served(self, user_id: str, items: Sequence[int] | np.ndarray) -> None:
        """``items`` were shown to ``user_id``: one impression each; later events on them count as clicks."""
        ids = [int(i) for i in np.asarray(items, dtype=np.int64).reshape(-1)]
        self.counts.record_impressions(ids)
        with self._lock:
            self._slates[user_id] = set(ids)
            self._slates.move_to_end(user_id)
            while len(self._slates) > self.max_users:
                self._slates.popitem(last=False)

    def event(self, user_id: str, item: int) -> bool:
        """``user_id`` interacted with ``item``; True when it was a click on their last slate (and counted)."""
        with self._lock:
            slate = self._slates.get(user_id)
            if slate is None or int(item) not in slate:
                return False
            slate.discard(int(item))
        self.counts.record_click(int(item))
        return True


def tie_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based model ranks [C] of candidates listed best first; a run of equal scores shares its first rank."""
    starts = np.ones(len(scores), dtype=bool)
    starts[1:] = scores[1:] != scores[:-1]
    return np.maximum.accumulate(np.where(starts, np.arange(len(scores)), 0))


class Explorer:
    """One arm's exploration policy; ``rerank`` is called once per request on the predictor's ranked candidates.

    Thompson reads ``feedback`` (its own ``FeedbackCounts`` when none is given); the caller records what was
    served and clicked into it (``ClickAttribution``), so the policy itself never mutates shared state.
    """

    def __init__(self, settings: ExploreSettings, feedback: FeedbackCounts | None = None) -> None:
        self.settings = settings
        self.feedback = feedback if feedback is not None else FeedbackCounts()
        self._policies = {ExploreMethod.GREEDY: self._greedy, ExploreMethod.EPSILON_GREEDY: self._epsilon_greedy,
                          ExploreMethod.THOMPSON: self._thompson}

    def request_rng(self, user_id: str, request_id: int | str) -> np.random.Generator:
        """``request_rng`` with this arm's seed."""
        return request_rng(self.settings.seed, user_id, request_id)

    def candidates_needed(self, k: int) -> int:
        """How many ranked candidates to ask the predictor for, for a slate of ``k``."""
        return max(k, self.settings.top_n)

    def rerank(self, item_ids: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, k: int,
               rng: np.random.Generator) -> ExploredSlate:
        """The slate of ``k`` to show (fewer only when fewer candidates exist) from candidates listed best first.

        ``item_ids`` [C] unique integer ids (Thompson looks them up in ``feedback``), ``scores`` [C] the model's
        scores in the same order (equal scores share a rank). Deterministic in ``rng`` and, for Thompson,
        the feedback counts."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(ids) != len(values):
            raise ValueError(f"rerank: {len(ids)} item ids but {len(values)} scores; give one score per candidate")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"rerank: k={k!r} must be an integer >= 1")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("rerank: candidate item ids repeat; the predictor must return each item once")
        window = min(len(ids), max(k, self.settings.top_n))  # candidates in play
        positions = self._policies[self.settings.method](ids[:window], values[:window], min(k, window), rng)
        return ExploredSlate(positions, ids[positions], positions >= k)

    # each policy: candidates [W] (best first), slate size K <= W -> positions [K] into the candidates
    def _greedy(self, ids: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(k)

    def _epsilon_greedy(self, ids: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        pool = list(range(k, len(ids)))  # ranks K..W-1: never a greedy pick, so no duplicates
        explore = rng.random(k) < self.settings.epsilon  # drawn for every slot, so draws do not depend on the pool
        positions, greedy = np.empty(k, dtype=np.int64), 0
        for slot in range(k):
            if explore[slot] and pool:
                positions[slot] = pool.pop(int(rng.integers(len(pool))))
            else:
                positions[slot], greedy = greedy, greedy + 1
        return positions

    def _thompson(self, ids: np.ndarray, scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        a, b = self.feedback.posterior(ids, s.prior_alpha, s.prior_beta)
        ctr = rng.beta(a, b)  # [W] one posterior draw per candidate
        key = np.log(np.maximum(ctr, 1e-300)) - s.rank_weight * np.log1p(tie_ranks(scores))
        return np.lexsort((np.arange(len(ids)), -key))[:k]  # ties: the model's order


EXPLORE_PARAMS = {"explore_method": "method", "explore_epsilon": "epsilon", "explore_top_n": "top_n",
                  "explore_seed": "seed", "explore_prior_alpha": "prior_alpha", "explore_prior_beta": "prior_beta",
                  "explore_rank_weight": "rank_weight"}


def explore_settings(params: dict[str, object]) -> ExploreSettings | None:
    """The exploration an arm's ``params`` ask for (``explore_*`` keys, see ``EXPLORE_PARAMS``), or None for greedy.
    ``explore_epsilon`` alone means epsilon-greedy (greedy at 0)."""
    given = {field: params[key] for key, field in EXPLORE_PARAMS.items() if key in params}
    if not given:
        return None
    if "method" not in given:
        given["method"] = ExploreMethod.EPSILON_GREEDY if float(given.get("epsilon", 0.0)) > 0 else ExploreMethod.GREEDY
    try:
        settings = ExploreSettings(**given)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arm params {given}: {exc}") from exc
    return None if settings.method == ExploreMethod.GREEDY else settings
