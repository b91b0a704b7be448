"""The per-user response cache: a user's last list, per arm, served again until something it depends on changes.

What a list of a response-cacheable arm depends on: the arm's model (``ArmModel``: version and item id
map), the user's history as the server holds it, ``k`` and ``exclude_seen``; nothing else (such a
predictor declares ``response_cacheable``: a sequence model without event-time inputs, whose answer is a
pure function of those). The key is ``(user, arm, k, exclude_seen)`` and an entry remembers the model that
computed it, so a lookup after a hot swap misses by construction. Invalidation keeps the invariant
"every entry was computed from the user's current history and the arm's current model":

* every change of a user's history goes through ``HistoryTail._apply`` (this replica's ``POST /events``
  before it is acknowledged, another replica's events read by the tail poller or a read-your-writes
  sync), which calls ``events_applied`` synchronously on the event loop, with no ``await`` between the
  history change and the invalidation, so no request can read the new history and then the old entry;
* a rebuild of every history (``histories_rebuilt``) or a model install (``models_installed``) drops
  entries wholesale;
* a list being computed while its user's history or its arm's model changes is not stored: ``begin``
  hands out a ``Pending`` ticket that invalidation marks stale, and ``put`` refuses a stale ticket.

Requests whose answer is randomised (exploration arms, interleaving experiments) or time-dependent
(models with event-time inputs, pipeline arms reading live window counts) never reach the cache: the
caller counts them as ``bypass``. Bounded by ``max_entries`` (least recently used first out) and by
``ttl_s``. Everything runs on the event loop thread, so there are no locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from seekrec.serving.predictor import Recommendation

RESPONSE = "response"  # the cache label of this cache's series
HIT, MISS, BYPASS = "hit", "miss", "bypass"
# invalidation reasons
EVENT, MODEL_SWAP, REBUILD, EXPIRED, CAPACITY = "event", "model_swap", "history_rebuild", "expired", "capacity"

CacheKey = tuple[str, str, int, bool]  # (user, arm, k, exclude_seen)


class CacheMetrics:
    """The cache series, registered in the app's registry (one set for every cache, told apart by ``cache``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("seekrec_cache_requests", "Cache lookups by cache and result (hit, miss, bypass: "
                                "the request cannot be served from the cache)", ["cache", "result"], registry=registry)
        self.entries = Gauge("seekrec_cache_entries", "Entries held, by cache", ["cache"], registry=registry)
        self.invalidations = Counter("seekrec_cache_invalidations", "Entries dropped, by cache and reason (event, "
                                     "model_swap, history_rebuild, expired, capacity)", ["cache", "reason"],
                                     registry=registry)


class Pending:
    """A list being computed for ``user``; ``stale`` once the user's history or any model changed meanwhile."""

    __slots__ = ("user", "stale")

    def __init__(self, user: str) -> None:
        self.user, self.stale = user, False


@dataclass(frozen=True)
class _Entry:
    model: object  # the ArmModel that computed it: compared by identity
    rec: Recommendation
    expires: float


class ResponseCache:
    """LRU of ``(user, arm, k, exclude_seen) -> Recommendation``; see the module docstring for the rules."""

    def __init__(self, max_entries: int, ttl_s: float, metrics: CacheMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries must be an integer >= 0 (0: no cache), got {max_entries!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be seconds > 0, got {ttl_s!r}")
        self.max_entries, self.ttl_s, self.metrics, self.clock = max_entries, float(ttl_s), metrics, clock
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()  # least recently used first
        self._by_user: dict[str, set[CacheKey]] = {}
        self._pending: dict[str, list[Pending]] = {}  # lists being computed, by user
        if metrics is not None:
            self._hits, self._misses, self._bypasses = (metrics.requests.labels(cache=RESPONSE, result=r)
                                                        for r in (HIT, MISS, BYPASS))
            self._size = metrics.entries.labels(cache=RESPONSE)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- lookups -----------------------------------------------------------------------------------------------
    def get(self, key: CacheKey, model: object) -> Recommendation | None:
        """The cached list of ``key`` if ``model`` computed it and it has not expired (counted as hit or miss)."""
        entry = self._entries.get(key)
        if entry is not None and entry.model is model and entry.expires > self.clock():
            self._entries.move_to_end(key)
            if self.metrics is not None:
                self._hits.inc()
            return entry.rec
        if entry is not None:  # another model's (a swap raced the install hook) or expired
            self._drop(key, EXPIRED if entry.model is model else MODEL_SWAP)
            self._gauge()
        if self.metrics is not None:
            self._misses.inc()
        return None

    async def serve(self, key: CacheKey, model: object,
                    compute: Callable[[], Awaitable[Recommendation]]) -> Recommendation:
        """The cached list of ``key``, or ``compute()``'s, stored unless its inputs changed meanwhile."""
        rec = self.get(key, model)
        if rec is not None:
            return rec
        pending = self.begin(key[0])
        try:
            rec = await compute()
            self.put(key, model, rec, pending)
        finally:
            self.end(pending)
        return rec

    def bypass(self) -> None:
        """Count a request that cannot be served from the cache (randomised or time-dependent answer)."""
        if self.metrics is not None:
            self._bypasses.inc()

    def begin(self, user: str) -> Pending:
        """Start computing a list for ``user``; pass the ticket to ``put``, and to ``end`` in any case."""
        pending = Pending(user)
        self._pending.setdefault(user, []).append(pending)
        return pending

    def end(self, pending: Pending) -> None:
        """The computation of ``pending`` is over (stored, failed or cancelled)."""
        tickets = self._pending.get(pending.user)
        if tickets is not None:
            tickets.remove(pending)
            if not tickets:
                del self._pending[pending.user]

    def put(self, key: CacheKey, model: object, rec: Recommendation, pending: Pending) -> bool:
        """Store ``rec`` unless its inputs changed while it was computed; whether it was stored."""
        if pending.stale or not self.enabled:
            return False
        if key in self._entries:
            self._drop(key, None)
        self._entries[key] = _Entry(model, rec, self.clock() + self.ttl_s)
        self._by_user.setdefault(key[0], set()).add(key)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)), CAPACITY)
        self._gauge()
        return True

    # -- invalidation ------------------------------------------------------------------------------------------
    def events_applied(self, users: Iterable[str]) -> None:
        """These users' histories changed: their entries go, and lists being computed for them are not stored."""
        for user in set(users):
            for pending in self._pending.get(user, ()):
                pending.stale = True
            for key in list(self._by_user.get(user, ())):
                self._drop(key, EVENT)
        self._gauge()

    def models_installed(self, arms: Mapping[str, object]) -> None:
        """New arm models (``{arm: ArmModel}`` after the swap): entries of arms whose model changed go."""
        self._stale_all()
        for key in [k for k, e in self._entries.items() if arms.get(k[1]) is not e.model]:
            self._drop(key, MODEL_SWAP)
        self._gauge()

    def histories_rebuilt(self) -> None:
        """Every history may have changed (rebuilt from the dataset and the log): everything goes."""
        self._stale_all()
        for key in list(self._entries):
            self._drop(key, REBUILD)
        self._gauge()

    def _stale_all(self) -> None:
        for tickets in self._pending.values():
            for pending in tickets:
                pending.stale = True

    def _drop(self, key: CacheKey, reason: str | None) -> None:
        del self._entries[key]
        keys = self._by_user[key[0]]
        keys.discard(key)
        if not keys:
            del self._by_user[key[0]]
        if reason is not None and self.metrics is not None:
            self.metrics.invalidations.labels(cache=RESPONSE, reason=reason).inc()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self._size.set(len(self._entries))
