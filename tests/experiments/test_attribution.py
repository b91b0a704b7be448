"""Attribution: events credit the served list named by their request id, or fall back to the user's most
recent list showing the item within the window; nothing else is credited."""

from __future__ import annotations

import pytest

from seekrec.experiments.attribution import EventRecord, Outcome, attribute
from seekrec.experiments.outcomes import ServedList
from seekrec.online.event_log import Event, LoggedEvent


def served(rid: str, user: str, t: float, items: list[str]) -> ServedList:
    return ServedList(rid, user, t, {"ranker": "control"}, "v1", items, 3.0, False)


LISTS = [
    served("r1", "u1", 100.0, ["a", "b", "c"]),
    served("r2", "u1", 200.0, ["c", "d", "a"]),
    served("r3", "u2", 150.0, ["a", "e"]),
]


def by_id(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.served.request_id: o for o in outcomes}


def test_an_event_with_a_request_id_credits_that_list():
    # "a" is in both of u1's lists; the id picks the older one although the newer is closer in time
    out = by_id(attribute(LISTS, [EventRecord("u1", "a", 210.0, request_id="r1")], window_s=600))
    assert (out["r1"].clicks, out["r1"].clicked_positions, out["r1"].value) == (1, (0,), 1.0)
    assert out["r2"].clicks == 0 and out["r3"].clicks == 0


def test_an_event_without_request_id_credits_the_latest_list_showing_the_item_within_the_window():
    events = [EventRecord("u1", "a", 210.0), EventRecord("u1", "b", 210.0), EventRecord("u2", "e", 151.0)]
    out = by_id(attribute(LISTS, events, window_s=600))
    assert (out["r2"].clicks, out["r2"].clicked_positions) == (1, (2,))  # "a" at position 2 of the newest list
    assert (out["r1"].clicks, out["r1"].clicked_positions) == (1, (1,))  # "b" only in the older list
    assert (out["r3"].clicks, out["r3"].clicked_positions) == (1, (1,))


@pytest.mark.parametrize("event", [
    EventRecord("u1", "a", 100.0 + 61, request_id="r1"),  # after the window
    EventRecord("u1", "a", 99.0, request_id="r1"),  # before the list was served
    EventRecord("u1", "z", 110.0, request_id="r1"),  # item not in the list
    EventRecord("u2", "a", 110.0, request_id="r1"),  # another user's list
    EventRecord("u1", "a", 110.0, request_id="r-unknown"),  # a list not in the log: no guessing
    EventRecord("u1", "a", 95.0),  # no list served yet
    EventRecord("u1", "b", 200.0 + 30),  # "b" only in r1, which is 130 s old
    EventRecord("u3", "a", 110.0),  # a user never served
])
def test_events_outside_the_rules_credit_nothing(event: EventRecord):
    outcomes = attribute(LISTS, [event], window_s=60)
    assert [o.clicks for o in outcomes] == [0, 0, 0] and [o.value for o in outcomes] == [0.0, 0.0, 0.0]


def test_the_window_edge_is_inclusive():
    out = by_id(attribute(LISTS, [EventRecord("u1", "c", 160.0), EventRecord("u1", "b", 160.0, request_id="r1")],
                          window_s=60))
    assert out["r1"].clicks == 2 and out["r1"].clicked_positions == (1, 2)


def test_click_types_and_value_types():
    events = [
        EventRecord("u1", "c", 201.0, "click", 1.0, "r2"),
        EventRecord("u1", "c", 202.0, "click", 1.0, "r2"),  # a second click: 2 clicks, 1 clicked item
        EventRecord("u1", "d", 203.0, "rating", 4.0, "r2"),
        EventRecord("u1", "a", 204.0, "dwell", 12.5, "r2"),
        EventRecord("u1", "a", 205.0, "purchase", 30.0, "r2"),
    ]
    default = by_id(attribute(LISTS, events, window_s=60))["r2"]
    assert (default.clicks, default.clicked_positions, default.value) == (2, (0,), 2.0)
    assert (default.shown, default.clicked) == (3, 1)
    custom = by_id(attribute(LISTS, events, window_s=60, click_types=("click", "purchase"),
                             value_types=("rating", "dwell")))["r2"]
    assert (custom.clicks, custom.clicked_positions, custom.value) == (3, (0, 2), 16.5)


def test_a_repeated_request_id_keeps_its_first_list():
    outcomes = attribute([*LISTS, LISTS[0]], [EventRecord("u1", "a", 101.0, request_id="r1")], window_s=60)
    assert [o.served.request_id for o in outcomes] == ["r1", "r2", "r3"] and outcomes[0].clicks == 1


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="window_s must be a finite number of seconds > 0, got 0"):
        attribute(LISTS, [], window_s=0)
    with pytest.raises(ValueError, match="click_types must be a collection"):
        attribute(LISTS, [], window_s=60, click_types="click")
    with pytest.raises(TypeError, match="EventRecord.from_event converts"):
        attribute(LISTS, [Event("u1", "a", 101.0)], window_s=60)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="EventRecord.time must be a finite number, got inf"):
        EventRecord("u1", "a", float("inf"))


def test_event_log_records_convert_with_or_without_a_request_id():
    logged = LoggedEvent("u1", "a", 101.0, "rating", 4.0, offset=7)
    assert EventRecord.from_event(logged) == EventRecord("u1", "a", 101.0, "rating", 4.0, None)
    assert EventRecord.from_event(logged, request_id="r1").request_id == "r1"
    stored = LoggedEvent("u1", "a", 101.0, "click", 1.0, "r9", offset=8)  # an event that carried its list's id
    assert EventRecord.from_event(stored).request_id == "r9"
    assert EventRecord.from_event(Event("u1", "a", 101.0, request_id="r2")).request_id == "r2"
