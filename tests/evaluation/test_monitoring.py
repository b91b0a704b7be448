"""PSI, MAPE, coverage and popularity percentiles against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import entropy

from seekrec.evaluation.monitoring import (
    calibration_mape,
    catalog_coverage,
    histogram,
    mape,
    popularity_percentiles,
    psi,
)


def test_psi_by_hand() -> None:
    # shares (0.5, 0.5) -> (0.8, 0.2): 0.3 ln(1.6) + (-0.3) ln(0.4) = 0.14100 + 0.27489
    assert psi(np.array([50, 50]), np.array([8, 2])) == pytest.approx(0.3 * math.log(1.6) - 0.3 * math.log(0.4))
    assert psi(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(0.0)  # counts or shares: the same
    assert math.isnan(psi(np.array([0, 0]), np.array([1, 2])))


@given(st.lists(st.integers(1, 100), min_size=2, max_size=8), st.data())
def test_psi_is_the_symmetric_kl_divergence(reference: list[int], data: st.DataObject) -> None:
    observed = data.draw(st.lists(st.integers(1, 100), min_size=len(reference), max_size=len(reference)))
    assert psi(np.array(reference), np.array(observed)) == pytest.approx(
        entropy(observed, reference) + entropy(reference, observed), abs=1e-9)


def test_psi_of_an_empty_bin_is_finite() -> None:
    assert math.isfinite(psi(np.array([10, 0]), np.array([5, 5]))) and psi(np.array([10, 0]), np.array([5, 5])) > 0.2


def test_histogram_has_open_ends_and_weights() -> None:
    edges = np.array([1, 2, 4])
    assert histogram(np.array([0, 1, 3, 3, 4, 100]), edges).tolist() == [1, 1, 2, 2]
    assert histogram(np.array([0, 5]), edges, weights=np.array([2.0, 3.0])).tolist() == [2.0, 0.0, 0.0, 3.0]


def test_mape_by_hand() -> None:
    # |0.12 - 0.1| / 0.1 = 0.2 and |0.15 - 0.2| / 0.2 = 0.25; the zero observation is left out
    assert mape(np.array([0.12, 0.15, 0.3]), np.array([0.1, 0.2, 0.0])) == pytest.approx(0.225)
    assert math.isnan(mape(np.array([1.0]), np.array([0.0])))


def test_calibration_mape_by_bins() -> None:
    # bin <0.5: predictions 0.1, 0.3 (mean 0.2), clicks 1 of 2 (0.5) -> 0.6; bin >=0.5: 0.6, 0.8 (0.7), 2 of 2 -> 0.3
    predicted, clicked = np.array([0.1, 0.3, 0.6, 0.8]), np.array([0, 1, 1, 1])
    assert calibration_mape(predicted, clicked, np.array([0.5])) == pytest.approx(0.45)
    assert calibration_mape(predicted, clicked, np.array([0.5]), min_count=3) != calibration_mape(
        predicted, clicked, np.array([0.5]))  # both bins too small: NaN
    perfect = np.repeat([0.25, 0.75], 4), np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert calibration_mape(*perfect, np.array([0.5])) == pytest.approx(0.0)


def test_coverage_and_popularity_percentiles() -> None:
    assert catalog_coverage([["a", "b"], ["b", "c"]], 6) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n_items"):
        catalog_coverage([], 0)
    # counts of items 1..4: 5, 1, 5, 9 -> sorted 1, 5, 5, 9: item 2 is lowest (0), 4 highest (1), 1 and 3 tie at 0.5
    assert popularity_percentiles(np.array([0, 5, 1, 5, 9])).tolist() == [0.0, 0.5, 0.0, 0.5, 1.0]
