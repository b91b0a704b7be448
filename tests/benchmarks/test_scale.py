"""benchmarks/scale.py: the ML-20M-shaped generator writes what ``seekrec data prepare`` reads, and the
measuring helpers report a run and its slope."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from benchmarks.scale import fit_slope, generate, measure_prepare, per_user_counts, shape_for, summarise


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scale") / "ml20m-shaped-2000"
    generate(2_000, folder, seed=3)
    return folder


def test_ratings_csv_has_the_official_layout(raw: Path):
    assert (raw / "ratings.csv").read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    assert (raw / "movies.csv").read_text().splitlines()[0] == "movieId,title,genres"
    table = pacsv.read_csv(raw / "ratings.csv")
    assert table.num_rows == 2_000 and table.column_names == ["userId", "movieId", "rating", "timestamp"]
    user, movie = table.column("userId").to_numpy(), table.column("movieId").to_numpy()
    stars, ts = table.column("rating").to_numpy(), table.column("timestamp").to_numpy()
    # sorted by userId, then movieId, with no repeated (user, movie)
    assert np.all((np.diff(user) > 0) | ((np.diff(user) == 0) & (np.diff(movie) > 0)))
    assert set(np.unique(user)) == set(range(1, shape_for(2_000)[0] + 1))
    assert set(np.unique(stars)) <= set(np.arange(1, 11) / 2)
    assert ts.min() >= 789_652_009 and ts.max() <= 1_427_784_002
    movies = pacsv.read_csv(raw / "movies.csv").column("movieId").to_numpy()
    assert np.isin(movie, movies).all()


def test_generation_is_reused(raw: Path):
    before = (raw / "ratings.csv").stat().st_mtime_ns
    assert generate(2_000, raw, seed=3)["events"] == 2_000
    assert (raw / "ratings.csv").stat().st_mtime_ns == before


def test_per_user_counts_sum_exactly_and_respect_bounds():
    rng = np.random.default_rng(0)
    counts = per_user_counts(100_000, *shape_for(100_000), rng)
    assert counts.sum() == 100_000 and counts.min() >= 20 and counts.max() <= shape_for(100_000)[1]
    with pytest.raises(ValueError, match="cannot fit"):
        per_user_counts(1_000, 2, 10, rng)


def test_seekrec_prepare_accepts_it_and_is_measured(raw: Path, tmp_path: Path):
    row = measure_prepare(raw, tmp_path, timeout_s=60, mem_cap_mb=4096)
    assert row["status"] == "ok", row.get("log_tail")
    assert row["seconds"] > 0 and row["peak_rss_mb"] > 10 and row["output_mb"] > 0
    assert any("2000 events" in p["message"] for p in row["phases"])
    assert str(tmp_path) not in json.dumps(row)  # results carry no machine paths


def test_a_run_over_the_memory_cap_is_killed(tmp_path: Path):
    from benchmarks.scale import run_measured

    hog = [sys.executable, "-c", "import time; x = bytearray(300 * 2**20); time.sleep(30)"]
    row = run_measured(hog, timeout_s=20, mem_cap_mb=150, log_path=tmp_path / "log")
    assert row["status"] == "over memory cap" and row["seconds"] < 15


def test_slopes_and_the_target_extrapolation():
    assert fit_slope([1e5, 1e6, 1e7], [1.0, 10.0, 100.0])["slope"] == pytest.approx(1.0)
    rows = [{"events": n, "status": "ok", "seconds": n / 1e5, "peak_rss_mb": 100.0} for n in (1e5, 1e6)]
    at = summarise(rows)["at_target"]
    assert not at["measured"] and at["seconds"] == pytest.approx(200.0) and not at["meets_time"] and at["meets_memory"]
    json.dumps(at)


def test_peak_rss_of_a_live_and_a_gone_process():
    import os
    import subprocess

    from benchmarks.scale import peak_rss_mb

    assert peak_rss_mb(os.getpid()) > 10
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert peak_rss_mb(gone.pid) == 0.0


def test_summaries_of_stages_with_a_time_target_only_or_none():
    rows = [{"events": n, "status": "ok", "seconds": n / 1e6, "peak_rss_mb": 100.0} for n in (1e5, 1e6, 1e7)]
    rows.append({"events": 2e7, "status": "not run: a smaller size timed out"})
    at = summarise(rows, {"events": 20_000_000, "seconds": 10.0})["at_target"]
    assert not at["measured"] and at["seconds"] == pytest.approx(20.0) and not at["meets_time"]
    assert "meets_memory" not in at
    report = summarise(rows, None)
    assert report["at_target"] is None and report["fits"]["seconds"]["slope"] == pytest.approx(1.0)
    assert len(report["local_slopes"]) == 2
    json.dumps(report)
