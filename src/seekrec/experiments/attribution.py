"""Attribution: which served list each feedback event belongs to, so that clicks land on the arm that
showed the item.

The server gives every answer a request id and clients echo it on the events that answer caused;
that is exact. Events without one (older clients, events replayed from the event log, which does not
store request ids) fall back to time: the user's most recent list that showed the item, shortly
before the event. Each event credits at most one list.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from seekrec.experiments.outcomes import MAX_REQUEST_ID_LEN, ServedList
from seekrec.online.event_log import Event

CLICK_TYPES = ("click",)


@dataclass(frozen=True)
class EventRecord:
    """A feedback event as attribution needs it: who, what, when (unix seconds), which kind and value,
    and the request id of the list it came from when the client sent one."""

    user_id: str
    item_id: str
    time: float
    event_type: str = "click"
    value: float = 1.0
    request_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("user_id", "item_id", "event_type"):
            text = getattr(self, name)
            if not isinstance(text, str) or not text:
                raise ValueError(f"EventRecord.{name} must be a non-empty string, got {text!r}")
        for name in ("time", "value"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
                raise ValueError(f"EventRecord.{name} must be a finite number, got {number!r}")
            object.__setattr__(self, name, float(number))
        rid = self.request_id
        if rid is not None and (not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID_LEN):
            raise ValueError(f"EventRecord.request_id must be None or a string of 1..{MAX_REQUEST_ID_LEN} "
                             f"characters, got {rid!r}")

    @classmethod
    def from_event(cls, event: Event, request_id: str | None = None) -> EventRecord:
        """Convert an event-log ``Event`` / ``LoggedEvent``. The log does not store request ids today;
        pass the one the HTTP request carried, or leave it None and an event that has a ``request_id``
        attribute (once the log stores it) supplies its own; an empty one counts as none."""
        rid = request_id if request_id is not None else getattr(event, "request_id", None)
        return cls(event.user_id, event.item_id, event.timestamp, event.event_type, event.value, rid or None)


@dataclass(frozen=True)
class Outcome:
    """What one served list earned: attributed click events, the distinct positions clicked (0-based,
    ascending) and the summed value of attributed value events."""

    served: ServedList
    clicks: int
    clicked_positions: tuple[int, ...]
    value: float

    @property
    def shown(self) -> int:
        """Items shown (the list's length): the CTR denominator."""
        return len(self.served.items)

    @property
    def clicked(self) -> int:
        """Distinct items clicked: the CTR numerator (so CTR never exceeds 1)."""
        return len(self.clicked_positions)


def _types(name: str, types: Collection[str]) -> frozenset[str]:
    if isinstance(types, str) or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"{name} must be a collection of event type names, e.g. ('click',), got {types!r}")
    return frozenset(types)


def attribute(served: Sequence[ServedList], events: Iterable[EventRecord], window_s: float, *,
              click_types: Collection[str] = CLICK_TYPES,
              value_types: Collection[str] | None = None) -> list[Outcome]:
    """One ``Outcome`` per served list (in ``served`` order; a repeated request id keeps its first list).

    An event of a type in ``click_types`` or ``value_types`` (None: the same as ``click_types``) credits:

    * with a ``request_id``: that list, if it was served to the same user, shows the item, and the
      event came ``0 <= event.time - served.time <= window_s`` seconds after it. Otherwise nothing:
      the client named the list, and crediting another one would guess.
    * without: the user's most recent list served at most ``window_s`` seconds before the event (and
      not after it) that shows the item.

    A credited click-type event adds 1 to ``clicks`` and its position to ``clicked_positions``; a
    value-type event adds its ``value``. Other event types are ignored.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not (0 < window_s < math.inf):
        raise ValueError(f"window_s must be a finite number of seconds > 0, got {window_s!r}")
    clicks_of = _types("click_types", click_types)
    values_of = clicks_of if value_types is None else _types("value_types", value_types)
    lists: dict[str, ServedList] = {}
    for record in served:
        if not isinstance(record, ServedList):
            raise TypeError(f"served must hold ServedList records, got {type(record).__name__}")
        lists.setdefault(record.request_id, record)
    # item -> first position, per list; and each user's lists by served time, for the fallback rule
    positions = {rid: {item: p for p, item in reversed(list(enumerate(s.items)))} for rid, s in lists.items()}
    by_user: dict[str, list[ServedList]] = {}
    for record in lists.values():
        by_user.setdefault(record.user_id, []).append(record)
    times: dict[str, list[float]] = {}
    for user, records in by_user.items():
        records.sort(key=lambda s: s.time)
        times[user] = [s.time for s in records]

    clicks = dict.fromkeys(lists, 0)
    clicked: dict[str, set[int]] = {rid: set() for rid in lists}
    value = dict.fromkeys(lists, 0.0)
    for event in events:
        if not isinstance(event, EventRecord):
            raise TypeError(f"events must hold EventRecord objects (EventRecord.from_event converts), "
                            f"got {type(event).__name__}")
        if event.event_type not in clicks_of and event.event_type not in values_of:
            continue
        target = _credited(event, lists, positions, by_user, times, window_s)
        if target is None:
            continue
        if event.event_type in clicks_of:
            clicks[target] += 1
            clicked[target].add(positions[target][event.item_id])
        if event.event_type in values_of:
            value[target] += event.value
    return [Outcome(s, clicks[rid], tuple(sorted(clicked[rid])), value[rid]) for rid, s in lists.items()]


def _credited(event: EventRecord, lists: dict[str, ServedList], positions: dict[str, dict[str, int]],
              by_user: dict[str, list[ServedList]], times: dict[str, list[float]], window_s: float) -> str | None:
    """The request id the event credits, or None."""
    if event.request_id is not None:
        record = lists.get(event.request_id)
        if (record is not None and record.user_id == event.user_id and event.item_id in positions[record.request_id]
                and 0 <= event.time - record.time <= window_s):
            return record.request_id
        return None
    records = by_user.get(event.user_id, [])
    j = bisect_right(times.get(event.user_id, []), event.time) - 1  # last list served at or before the event
    while j >= 0 and event.time - records[j].time <= window_s:
        if event.item_id in positions[records[j].request_id]:
            return records[j].request_id
        j -= 1
    return None
