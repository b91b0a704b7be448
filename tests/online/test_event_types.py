"""Event validation: every bad field is rejected with an error that names it."""

from __future__ import annotations

import math

import pytest

from seekrec.online.event_log import Event, LoggedEvent


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": 7}, "user_id"),
        ({"item_id": ""}, "item_id"),
        ({"item_id": None}, "item_id"),
        ({"event_type": ""}, "event_type"),
        ({"user_id": "bad\ud800"}, "user_id"),  # a lone surrogate cannot be stored as UTF-8
        ({"timestamp": math.nan}, "timestamp"),
        ({"timestamp": math.inf}, "timestamp"),
        ({"timestamp": "1700000000"}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"value": -math.inf}, "value"),
        ({"value": math.nan}, "value"),
    ],
)
def test_invalid_fields_raise_value_errors_naming_the_field(kwargs, field):
    fields = {"user_id": "u1", "item_id": "i1", "timestamp": 1.0} | kwargs
    with pytest.raises(ValueError, match=f"Event.{field}"):
        Event(**fields)


def test_defaults_and_int_numbers_become_floats():
    event = Event("u1", "i1", 1_700_000_000)
    assert event.event_type == "click" and event.value == 1.0
    assert type(event.timestamp) is float and type(event.value) is float
    assert Event("u1", "i1", 5, value=2) == Event("u1", "i1", 5.0, value=2.0)


def test_events_are_frozen():
    with pytest.raises(AttributeError):
        Event("u1", "i1", 1.0).user_id = "u2"


def test_logged_event_carries_a_positive_offset_and_strips_back_to_the_event():
    logged = LoggedEvent("u1", "i1", 2.0, "buy", 3.0, offset=4)
    assert logged.offset == 4 and logged.event() == Event("u1", "i1", 2.0, "buy", 3.0)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="offset"):
            LoggedEvent("u1", "i1", 2.0, offset=bad)
    with pytest.raises(ValueError, match="Event.item_id"):
        LoggedEvent("u1", "", 2.0, offset=1)
