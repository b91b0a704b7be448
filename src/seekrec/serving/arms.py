"""The arm table: which loaded version serves each experiment arm, and each arm's item id map.

Item ids. Histories hold ids of the server's own catalog, which grows (append-only) with the raw ids
of every version loaded; each arm carries a map from those ids to its model's ids, so versions
trained on differently ordered catalogs can be served side by side. A hot swap is one assignment of
a new arm dict (``swap``), so a request sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seekrec.data.vocab import Catalog, Vocab
from seekrec.experiments.definition import channel_of
from seekrec.online.histories import HistoryEvent
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.serving.loading import load_predictor
from seekrec.serving.metrics import ServingMetrics
from seekrec.serving.predictor import LoadContext, Predictor
from seekrec.serving.settings import CURRENT, ArmSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class ArmModel:
    """A predictor and the map ``server item id -> model item id`` (0: the model does not know it).

    ``needs_context``: the predictor's model has event-time / action inputs, so its queries carry the
    events' times and values (``translate_events``); predictors without the attribute need none."""

    predictor: Predictor
    to_model: np.ndarray  # [M + 1]
    needs_context: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_context", bool(getattr(self.predictor, "needs_context", False)))

    def translate(self, items: Sequence[int]) -> tuple[int, ...]:
        """Server ids -> this model's ids, dropping items it does not know (ids added after it loaded too)."""
        size = len(self.to_model)
        return tuple(m for m in (int(self.to_model[i]) if i < size else 0 for i in items) if m > 0)

    def translate_events(self, events: Sequence[HistoryEvent]) -> tuple[tuple[int, ...], tuple[int, ...],
                                                                        tuple[float, ...]]:
        """``translate`` for ``(server id, time, value)`` events: this model's ids and, aligned with them,
        the kept events' times and values."""
        size = len(self.to_model)
        kept = [(m, t, v) for m, t, v in ((int(self.to_model[i]) if i < size else 0, t, v) for i, t, v in events)
                if m > 0]
        if not kept:
            return (), (), ()
        items, times, values = zip(*kept)
        return items, times, values


class ArmTable:
    """Loads versions for the arms, grows the server catalog, builds id maps and swaps the arm dict."""

    def __init__(self, registry: ModelRegistry, arms: Sequence[ArmSettings], context: LoadContext,
                 metrics: ServingMetrics) -> None:
        self.registry, self.settings, self.context, self.metrics = registry, tuple(arms), context, metrics
        # server item ids for histories; grows as versions load (its counts are unused: popularity
        # comes from each version's own catalog)
        self.catalog = Catalog(Vocab())
        self.arms: dict[str, ArmModel] = {}  # replaced whole on every swap, never mutated
        # what each moving arm version serves now: "current" -> v.., "channel:<name>" -> v..
        self.heads: dict[str, str] = {}
        self.failed_versions: dict[str, str] = {}  # version -> error, so a broken one is not reloaded each poll
        self.pointer_error: str | None = None  # why CURRENT could not be read at start-up, if it could not

    @property
    def current_version(self) -> str | None:
        """The version the ``current`` arms serve (None before one loads)."""
        return self.heads.get(CURRENT)

    # -- loading -----------------------------------------------------------------------------
    def wants_current(self) -> bool:
        """Whether CURRENT must be followed: an arm serves it, or a channel arm falls back to it."""
        return bool(self.pointers())

    def pointers(self) -> list[str]:
        """The moving arm versions to poll: ``"current"`` and each ``"channel:<name>"``, CURRENT first."""
        moving = {a.version for a in self.settings if a.version == CURRENT or channel_of(a.version) is not None}
        return sorted(moving, key=lambda v: (v != CURRENT, v))

    def read_head(self, pointer: str, current: str | None) -> str | None:
        """Worker thread: the version ``pointer`` names now. A channel nothing was published to yet serves
        CURRENT, the version its learner starts from."""
        channel = channel_of(pointer)
        if channel is None:
            return current
        return self.registry.channel(channel) or current

    def loaded(self, version: str) -> Predictor | None:
        """The predictor of ``version`` if an arm already serves it (two pointers may name one version)."""
        return next((m.predictor for m in self.arms.values() if m.predictor.version == version), None)

    async def load_initial(self) -> tuple[dict[str, Predictor], dict[str, str]]:
        """Pinned versions first (errors propagate: start-up fails), then CURRENT, then channel heads;
        returns the predictors and what each moving arm version serves (``heads``).

        A CURRENT that cannot be loaded (corrupt files, an unreadable pointer) must not leave a
        restarted server answering 503 until someone rolls back by hand: the newest version that
        loads serves instead, and the bad one is reported (``failed_versions``, the ``model_load``
        error count, ``/readyz``'s detail, the log). The poller keeps skipping the bad version and
        swaps in the next one published."""
        pinned = {a.version for a in self.settings if a.version not in self.pointers()}
        loaded = {v: await asyncio.to_thread(self.load, v) for v in sorted(pinned)}
        if not self.wants_current():
            return loaded, {}
        loaded, current = await self._load_current(loaded)
        heads = {} if current is None else {CURRENT: current}
        for pointer in self.pointers():
            try:
                head = await asyncio.to_thread(self.read_head, pointer, current)
            except RegistryError as exc:  # a garbage channel file must not keep the server from starting
                self.metrics.errors.labels(kind="model_load").inc()
                log.error("cannot read %s: %s; its arms serve CURRENT until it is published to again", pointer, exc)
                head = current
            if pointer == CURRENT or head is None:
                continue
            predictor = loaded.get(head) or await self.try_load(head)
            if predictor is None and current is not None:  # a bad channel head: serve what its learner started from
                head, predictor = current, loaded[current]
            if predictor is not None:
                loaded[head], heads[pointer] = predictor, head
        return loaded, heads

    async def _load_current(self, loaded: dict[str, Predictor]) -> tuple[dict[str, Predictor], str | None]:
        """CURRENT, or the newest version that loads when it cannot be served; the predictors and that version."""
        try:
            current = await asyncio.to_thread(self.registry.current)
        except RegistryError as exc:  # CURRENT itself is garbage: any good version beats none
            self.pointer_error = str(exc)
            self.metrics.errors.labels(kind="model_load").inc()
            log.error("cannot read the registry's CURRENT: %s", exc)
            current = None
        if current is not None:
            predictor = loaded.get(current) or await self.try_load(current)
            if predictor is not None:
                loaded[current] = predictor
                return loaded, current
        if current is None and self.pointer_error is None:
            return loaded, None  # nothing promoted yet: not ready until something is
        fallback = await self._newest_good(loaded)
        if fallback is None:
            return loaded, None
        version, predictor = fallback
        loaded[version] = predictor
        log.error("CURRENT %s cannot be served (%s); serving %s, the newest version that loads, until a good "
                  "version is promoted", current, self.failed_versions.get(current or "", self.pointer_error), version)
        return loaded, version

    async def _newest_good(self, loaded: dict[str, Predictor]) -> tuple[str, Predictor] | None:
        """The newest published version that loads (skipping known-bad ones), or ``None``."""
        for version in reversed(await asyncio.to_thread(self.registry.store.published)):
            if version in self.failed_versions:
                continue
            predictor = loaded.get(version) or await self.try_load(version)
            if predictor is not None:
                return version, predictor
        return None

    def degraded(self) -> str | None:
        """Why the ``current`` arms do not serve the registry's CURRENT (``None`` when they do)."""
        if self.pointer_error is not None:
            return f"CURRENT is unreadable ({self.pointer_error}); serving {self.current_version}"
        serving = -1 if self.current_version is None else int(self.current_version[1:])
        bad = {v: e for v, e in self.failed_versions.items() if int(v[1:]) > serving}
        if not bad:
            return None
        return "; ".join(f"{v} failed to load: {e}" for v, e in bad.items()) + f"; serving {self.current_version}"

    def load(self, version: str) -> Predictor:
        """Worker thread: the predictor of ``version``, whatever its kind."""
        return load_predictor(self.registry, version, self.context)

    async def try_load(self, version: str) -> Predictor | None:
        """Load off the loop; a bad version (checksum, missing catalog, unbuildable model) is counted
        and remembered so that polling does not re-hash it every interval."""
        try:
            return await asyncio.to_thread(self.load, version)
        except Exception as exc:  # noqa: BLE001 - any failure to load must leave the old model serving
            self.failed_versions[version] = str(exc)
            self.metrics.errors.labels(kind="model_load").inc()
            log.error("cannot load %s, still serving %s: %s", version, self.current_version, exc)
            return None

    # -- installing --------------------------------------------------------------------------
    async def build(self, predictors: dict[str, Predictor],
                    heads: dict[str, str]) -> tuple[dict[str, ArmModel], list[str]]:
        """Grow the server catalog with the versions' items (on the loop: histories read it), map ids
        (off the loop); returns the next arm dict, not yet swapped in, and the raw ids that were new."""
        new_raws = await asyncio.to_thread(self._unknown_raws, list(predictors.values()))
        for raw in new_raws:
            self.catalog.add(raw)
        server_raws = await asyncio.to_thread(self.catalog.items.decode, np.arange(1, len(self.catalog.items) + 1))
        built = {v: ArmModel(p, await asyncio.to_thread(_id_map, server_raws, p)) for v, p in predictors.items()}
        arms, heads = dict(self.arms), {**self.heads, **heads}
        for arm in self.settings:
            version = heads.get(arm.version, arm.version)
            if version in built:
                arms[arm.name] = built[version]
        return arms, new_raws

    def swap(self, arms: dict[str, ArmModel], heads: dict[str, str]) -> None:
        """The hot swap: one reference assignment (and the moving versions' new heads)."""
        self.arms = arms
        self.heads = {**self.heads, **heads}

    # -- reading -----------------------------------------------------------------------------
    def predictors(self) -> list[Predictor]:
        """Each loaded predictor once (two arms may serve the same version)."""
        return list({id(m.predictor): m.predictor for m in self.arms.values()}.values())

    def missing(self) -> list[str]:
        """Arms without a model yet."""
        return [a.name for a in self.settings if a.name not in self.arms]

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{arm: Predictor.describe()}`` for arms with a model."""
        return {name: model.predictor.describe() for name, model in self.arms.items()}

    def _unknown_raws(self, predictors: list[Predictor]) -> list[str]:
        seen: set[str] = set()
        out = []
        for predictor in predictors:
            for raw in predictor.catalog.items.decode(np.arange(1, predictor.n_items + 1)):
                if raw not in self.catalog.items and raw not in seen:
                    seen.add(raw)
                    out.append(raw)
        return out


def _id_map(server_raws: list[str], predictor: Predictor) -> np.ndarray:
    """``[M + 1]`` server id -> model id via raw ids (row 0 stays padding; items past the model's table: 0)."""
    ids = np.concatenate([[0], predictor.catalog.items.encode(server_raws)]).astype(np.int64)
    ids[ids > predictor.n_items] = 0
    return ids
