import numpy as np
import pytest
from scipy import stats

from seekrec.evaluation.abtest import welch_test


def test_matches_scipy_welch_and_ci_covers_the_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.10, 0.05, 400), rng.normal(0.12, 0.09, 300)
    report = welch_test(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert report.t == pytest.approx(ref.statistic) and report.p_value == pytest.approx(ref.pvalue)
    assert report.ci_low < report.diff < report.ci_high
    assert report.diff == pytest.approx(b.mean() - a.mean())
    assert "Welch" in report.summary("frozen", "realtime")


def test_ci_coverage_is_close_to_nominal():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        report = welch_test(rng.normal(0, 1, 30), rng.normal(0.5, 2, 20))
        covered += report.ci_low <= 0.5 <= report.ci_high
    assert 0.92 <= covered / 400 <= 0.98


def test_no_difference_and_bad_input():
    assert welch_test(np.zeros(5), np.zeros(5)).p_value == 1.0
    assert welch_test(np.zeros(5), np.ones(5)).p_value == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        welch_test(np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        welch_test(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
