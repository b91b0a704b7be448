import numpy as np
import pytest

from seekrec.demo.traffic import freshness_seconds, percentiles


def test_freshness_uses_the_first_served_version_that_covers_the_event():
    acked = [(5, 100.0), (12, 101.0), (30, 102.0)]
    served = [(100.5, 4), (101.5, 10), (102.5, 20), (103.0, 12)]  # (first served at, trained through offset)
    fresh = freshness_seconds(acked, served)
    # event 5 -> first covering version served at 101.5; event 12 -> 102.5; event 30 never covered
    assert fresh.tolist() == pytest.approx([1.5, 1.5])


def test_a_version_served_before_the_event_was_acknowledged_does_not_count():
    assert freshness_seconds([(3, 10.0)], [(9.0, 5), (12.0, 6)]).tolist() == [2.0]


def test_percentiles_of_nothing_are_nan():
    assert np.isnan(percentiles([])["p99"])
    assert percentiles([1.0, 2.0, 3.0])["p50"] == 2.0
