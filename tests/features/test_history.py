import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seekrec.features.history import EventIndex, Events, window_seconds


@st.composite
def logs_and_queries(draw):
    n_entities = draw(st.integers(1, 5))
    n = draw(st.integers(0, 40))
    entities = np.array(draw(st.lists(st.integers(1, n_entities), min_size=n, max_size=n)), dtype=np.int64)
    partners = np.array(draw(st.lists(st.integers(1, 9), min_size=n, max_size=n)), dtype=np.int64)
    times = np.array(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), dtype=np.int64)  # many ties
    b = draw(st.integers(1, 10))
    q_entities = np.array(draw(st.lists(st.integers(0, n_entities + 2), min_size=b, max_size=b)), dtype=np.int64)
    q_times = np.array(draw(st.lists(st.integers(-3, 16), min_size=b, max_size=b)), dtype=np.int64)
    return n_entities, entities, partners, times, q_entities, q_times


def _reference_last(entities, partners, times, entity, t, n):
    """Plain loop: the entity's events strictly before t, in (time, input order), last n."""
    rows = [(times[k], k, partners[k]) for k in range(len(entities)) if entities[k] == entity and times[k] < t]
    rows.sort()
    rows = rows[-n:]
    pad = n - len(rows)
    return [0] * pad + [p for _, _, p in rows], [0] * pad + [int(ts) for ts, _, _ in rows]


@settings(max_examples=60, deadline=None)
@given(logs_and_queries(), st.integers(1, 4))
def test_last_before_matches_a_plain_loop(case, n):
    n_entities, entities, partners, times, q_entities, q_times = case
    index = EventIndex.build(entities, partners, times, n_entities)
    got_partners, got_times = index.last_before(q_entities, q_times, n)
    for row, (e, t) in enumerate(zip(q_entities, q_times)):
        want_partners, want_times = _reference_last(entities, partners, times, e, t, n)
        assert got_partners[row].tolist() == want_partners
        assert got_times[row].tolist() == want_times


@settings(max_examples=60, deadline=None)
@given(logs_and_queries())
def test_window_counts_match_a_plain_loop(case):
    n_entities, entities, partners, times, q_entities, q_times = case
    index = EventIndex.build(entities, partners, times, n_entities)
    windows = (1, 3, 100)
    counts = index.window_counts(q_entities, q_times, windows)
    for row, (e, t) in enumerate(zip(q_entities, q_times)):
        for k, w in enumerate(windows):
            want = sum(1 for j in range(len(entities)) if entities[j] == e and t - w <= times[j] < t)
            assert counts[row, k] == want


def test_fractional_query_times_select_the_same_events_as_their_ceiling():
    index = EventIndex.build(np.array([1, 1, 1]), np.array([7, 8, 9]), np.array([10, 11, 12]), 1)
    # t = 11.5: events at 10 and 11 are before it; the 1 s window [10.5, 11.5) holds only 11
    assert index.window_counts(np.array([1]), np.array([11.5]), (1,)).tolist() == [[1]]
    assert index.last_before(np.array([1]), np.array([11.5]), 3)[0].tolist() == [[0, 7, 8]]


def test_entities_out_of_range_are_rejected_at_build():
    with pytest.raises(ValueError, match="1..2"):
        EventIndex.build(np.array([3]), np.array([1]), np.array([0]), 2)


def test_events_accept_only_aligned_arrays_and_sort_stably():
    with pytest.raises(ValueError, match="same length"):
        Events(np.array([1, 2]), np.array([1]), np.array([0, 1]))
    events = Events(np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([5, 1, 5])).time_order()
    assert events.users.tolist() == [2, 1, 3]
    assert window_seconds(7) == 7 * 86_400
    with pytest.raises(ValueError, match="one second"):
        window_seconds(0)
