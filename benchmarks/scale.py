"""Cost curves of the pipeline against the number of events (issue 17, "Scale"): wall time, peak RSS and
disk use per stage at 10^5 .. 2x10^7 events, each with its fitted log-log slope (1.0 = linear in events).

Only the ``prepare`` stage exists so far; later stages (train, evaluate, serve) join as further
``measure_<stage>`` functions in ``STAGES``, each turning one generated dataset into one result row.

Data: an ML-20M-shaped ``ratings.csv`` + ``movies.csv`` (the official ml-20m layout: header
``userId,movieId,rating,timestamp``, ratings 0.5-5.0 in halves, unix-second timestamps, rows sorted by
userId then movieId, as the official file is). Users scale with events as in ML-20M (138,493 users for
20,000,263 events, at least 20 ratings each, heavy-tailed); the catalogue grows with the square root of
events up to ML-20M's 27,278 movies (1,929 at 10^5, 27,278 at 2x10^7), with Zipf popularity; no user rates a
movie twice. Generated in user chunks (bounded memory) into ``--work``, and reused by later runs.

Each size runs ``python -m seekrec.cli data prepare --dataset ml-20m --raw DIR --out OUT --no-verify-counts``
in a fresh process; its peak RSS is that child's own ``ru_maxrss`` (``os.wait4``), and its RSS is polled so
a run above ``--mem-cap-gb`` is killed. A size that times out or passes the cap is recorded as not completed,
and no larger size is tried.

    python benchmarks/scale.py
    python benchmarks/scale.py --events 100000 1000000 --work /tmp/scale --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_prepare.json"
FIGURE = ROOT / "docs" / "scale_prepare.png"
ML20M_EVENTS, ML20M_USERS, ML20M_ITEMS = 20_000_263, 138_493, 27_278
ML20M_MAX_MOVIE_ID = 131_262
FIRST_TS, LAST_TS = 789_652_009, 1_427_784_002  # the official file's first and last timestamps
MIN_PER_USER = 20
# ML-20M's share of each half-star rating, 0.5 .. 5.0
STAR_SHARE = np.array([1.2, 3.4, 1.4, 7.2, 4.4, 21.4, 11.0, 27.9, 7.7, 14.4])
STARS = np.array(["0.5", "1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0", "4.5", "5.0"])
TARGET = {"events": 20_000_000, "seconds": 180.0, "peak_rss_mb": 4096.0}
DEFAULT_EVENTS = (100_000, 1_000_000, 10_000_000, 20_000_000)
_BARE = pacsv.WriteOptions(include_header=False, quoting_style="none")
USER_CHUNK_ROWS = 2_000_000  # generator rows per chunk (about 100 MB of arrays)


# -- data ---------------------------------------------------------------------------------------------------


def shape_for(events: int) -> tuple[int, int]:
    """``(users, items)`` of an ML-20M-shaped dataset with ``events`` ratings."""
    users = max(1, round(events * ML20M_USERS / ML20M_EVENTS))
    items = min(ML20M_ITEMS, max(50, round(ML20M_ITEMS * math.sqrt(events / ML20M_EVENTS))))
    return users, items


def per_user_counts(events: int, users: int, items: int, rng: np.random.Generator) -> np.ndarray:
    """[U] ratings per user: at least ``MIN_PER_USER``, heavy-tailed, at most a third of the catalogue, summing to
    ``events``."""
    if events > users * items:
        raise ValueError(f"{events} ratings cannot fit {users} users x {items} items without repeats; use more events")
    floor = min(MIN_PER_USER, events // users)
    cap = min(items, max(items // 3, 2 * math.ceil(events / users)))
    weights = rng.lognormal(0.0, 1.2, users)
    counts = np.full(users, floor, dtype=np.int64)
    left = events - counts.sum()
    while left > 0:  # spread the rest by weight; what the cap clips goes round again
        room = cap - counts
        w = np.where(room > 0, weights, 0.0)
        share = np.minimum(np.floor(left * w / w.sum()).astype(np.int64), room)
        if share.sum() == 0:  # the remainder is smaller than one share: one each to the heaviest with room
            order = np.argsort(-w)[:left]
            share = np.zeros(users, dtype=np.int64)
            share[order] = 1
        counts += share
        left = events - counts.sum()
    return counts


def sample_unique_items(counts: np.ndarray, cdf: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For users with ``counts`` [U] ratings: ``(user_index, item_rank)`` [sum(counts)], distinct items per
    user drawn by popularity ``cdf`` [I], sorted by user then item rank."""
    n_items = len(cdf)
    have = np.empty(0, dtype=np.int64)  # sorted keys user * n_items + item already chosen
    todo_users, todo_need = np.arange(len(counts)), counts
    oversample = 1.5
    while len(todo_users):
        draws = np.repeat(todo_users, np.ceil(todo_need * oversample).astype(np.int64) + 4)
        oversample *= 2  # users still short want popular-tail items: draw more each round
        picked = np.searchsorted(cdf, rng.random(len(draws)), side="right").clip(max=n_items - 1)
        key = np.setdiff1d(np.unique(draws * n_items + picked), have, assume_unique=True)  # new distinct pairs
        # keep a random todo_need of each user's new pairs
        order = np.lexsort((rng.random(len(key)), key // n_items))
        user = key[order] // n_items
        group = np.searchsorted(todo_users, user)
        rank = np.arange(len(key)) - np.searchsorted(user, todo_users)[group]
        chosen = key[order[rank < todo_need[group]]]
        have = np.union1d(have, chosen)
        got = np.bincount(np.searchsorted(todo_users, chosen // n_items), minlength=len(todo_users))
        short = got < todo_need
        todo_users, todo_need = todo_users[short], todo_need[short] - got[short]
    return have // n_items, have % n_items


def generate(events: int, folder: Path, seed: int = 0) -> dict[str, Any]:
    """Write an ML-20M-shaped ``ratings.csv`` and ``movies.csv`` of ``events`` ratings into ``folder``
    (skipped when a finished copy is there); returns its shape."""
    done = folder / "shape.json"
    if done.is_file():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users, items = shape_for(events)
    counts = per_user_counts(events, users, items, rng)
    movie_ids = np.sort(rng.choice(np.arange(1, ML20M_MAX_MOVIE_ID + 1), items, replace=False))
    popularity = 1.0 / np.arange(1, items + 1) ** 1.0  # rank r has weight 1/r
    cdf = np.cumsum(popularity) / popularity.sum()
    rank_to_movie = rng.permutation(movie_ids)  # popularity is unrelated to id
    star_p = STAR_SHARE / STAR_SHARE.sum()

    tmp = folder / "ratings.csv.part"
    bounds = np.searchsorted(np.cumsum(counts), np.arange(USER_CHUNK_ROWS, events, USER_CHUNK_ROWS), side="left")
    schema = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.string()),
                        ("timestamp", pa.int64())])
    with open(tmp, "wb") as sink, pacsv.CSVWriter(sink, schema, write_options=_BARE) as writer:
        sink.write(b"userId,movieId,rating,timestamp\n")  # pyarrow would quote the header; the official file does not
        for lo, hi in zip(np.append(0, bounds + 1), np.append(bounds + 1, users)):
            if lo >= hi:
                continue
            user, rank = sample_unique_items(counts[lo:hi], cdf, rng)
            movie = rank_to_movie[rank]
            order = np.lexsort((movie, user))  # the official order: userId, then movieId
            user, movie = user[order] + lo + 1, movie[order]
            # each user is active over [start, start + span]; ratings fall uniformly within it
            start = rng.integers(FIRST_TS, LAST_TS, hi - lo)
            span = np.minimum(rng.exponential(200 * 86_400.0, hi - lo), LAST_TS - start).astype(np.int64)
            local = user - lo - 1
            ts = start[local] + (rng.random(len(user)) * (span[local] + 1)).astype(np.int64)
            stars = STARS[rng.choice(len(STARS), len(user), p=star_p)]
            writer.write_table(pa.table({"userId": user, "movieId": movie, "rating": pa.array(stars, pa.string()),
                                         "timestamp": ts}))
    tmp.rename(folder / "ratings.csv")
    titles = [f"Movie {m} ({1900 + m % 115})" for m in movie_ids]
    genres = np.array(["Drama", "Comedy", "Action|Thriller", "Comedy|Romance", "Documentary", "Horror",
                       "Adventure|Animation|Children", "(no genres listed)"])[movie_ids % 8]
    with open(folder / "movies.csv", "wb") as sink:
        sink.write(b"movieId,title,genres\n")
        pacsv.write_csv(pa.table({"movieId": movie_ids, "title": titles, "genres": genres}), sink,
                        write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    shape = {"events": int(events), "users": int(users), "items": int(items),
             "ratings_csv_mb": round((folder / "ratings.csv").stat().st_size / 2**20, 1), "seed": seed}
    done.write_text(json.dumps(shape))
    return shape


# -- measuring ----------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], timeout_s: float, mem_cap_mb: float, log_path: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds, own peak RSS (MB) and status: ok, timed out, over memory cap or failed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "wb") as log:
        started, start = datetime.now(), time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        status, polled_mb = "ok", 0.0
        while True:
            pid, wait_status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            rss = _rss_mb(child.pid)
            polled_mb = max(polled_mb, rss)
            if time.perf_counter() - start > timeout_s or rss > mem_cap_mb:
                status = "timed out" if rss <= mem_cap_mb else "over memory cap"
                os.kill(child.pid, signal.SIGKILL)
                _, wait_status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(wait_status)  # so Popen does not wait on it again
    if status == "ok" and child.returncode != 0:
        status = f"failed (exit {child.returncode})"
    return {"status": status, "seconds": round(seconds, 2), "started": started.isoformat(),
            "peak_rss_mb": round(max(usage.ru_maxrss / 1024, polled_mb), 1)}  # ru_maxrss is in KiB on Linux


def _rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(found[1]) / 1024 if found else 0.0


def disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 3)


def log_phases(log_text: str, started: datetime) -> list[dict[str, Any]]:
    """The prepare log's timestamped lines as ``{"t_s": seconds since the process started, "message": ...}``."""
    lines = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$", log_text, re.M)
    stamps = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t, _ in lines]
    return [{"t_s": round((s - started).total_seconds(), 2), "message": m} for s, (_, m) in zip(stamps, lines)]


def prepare_command(raw: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "seekrec.cli", "data", "prepare", "--dataset", "ml-20m", "--raw", str(raw),
            "--out", str(out), "--no-verify-counts"]


def measure_prepare(raw: Path, work: Path, timeout_s: float, mem_cap_mb: float) -> dict[str, Any]:
    """One ``seekrec data prepare`` of the dataset in ``raw``."""
    out = work / f"{raw.name}-prepared"
    shutil.rmtree(out, ignore_errors=True)
    log_path = work / f"{raw.name}-prepare.log"
    row = run_measured(prepare_command(raw, out), timeout_s, mem_cap_mb, log_path)
    log_text = log_path.read_text(errors="replace")
    log_text = log_text.replace(str(work), "<work>")  # no machine paths in the results
    row["phases"] = log_phases(log_text, datetime.fromisoformat(row.pop("started")))
    if row["status"] == "ok":
        row["output_mb"] = disk_mb(out)
    else:
        row["log_tail"] = log_text[-2000:]
    shutil.rmtree(out, ignore_errors=True)
    return row


STAGES: dict[str, Callable[[Path, Path, float, float], dict[str, Any]]] = {"prepare": measure_prepare}


# -- fitting and reporting ----------------------------------------------------------------------------------


def fit_slope(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares ``log y = slope * log x + intercept``; ``None`` with fewer than two points."""
    if len(xs) < 2:
        return None
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"slope": round(float(slope), 3), "intercept": round(float(intercept), 4)}


def extrapolate(fit: dict[str, float] | None, x: float) -> float | None:
    return None if fit is None else round(float(math.exp(fit["intercept"]) * x ** fit["slope"]), 1)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "ok"]
    xs = [r["events"] for r in done]
    fits = {"seconds": fit_slope(xs, [r["seconds"] for r in done]),
            "peak_rss_mb": fit_slope(xs, [r["peak_rss_mb"] for r in done])}
    at_target = next((r for r in done if r["events"] == TARGET["events"]), None)
    if at_target is not None:
        comparison = {"measured": True, "seconds": at_target["seconds"], "peak_rss_mb": at_target["peak_rss_mb"]}
    else:
        comparison = {"measured": False, "seconds": extrapolate(fits["seconds"], TARGET["events"]),
                      "peak_rss_mb": extrapolate(fits["peak_rss_mb"], TARGET["events"])}
    comparison["meets_time"] = comparison["seconds"] is not None and comparison["seconds"] < TARGET["seconds"]
    comparison["meets_memory"] = (comparison["peak_rss_mb"] is not None
                                  and comparison["peak_rss_mb"] < TARGET["peak_rss_mb"])
    # slope between neighbouring sizes: start-up cost flattens the small end of the overall fit
    local = [{"from": a["events"], "to": b["events"],
              **{k: round(math.log(b[k] / a[k]) / math.log(b["events"] / a["events"]), 3)
                 for k in ("seconds", "peak_rss_mb")}} for a, b in zip(done, done[1:])]
    return {"fits": fits, "local_slopes": local, "target": TARGET, "at_target": comparison}


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok"]
    xs = np.array([r["events"] for r in done], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, limit in ((axes[0], "seconds", "wall seconds", TARGET["seconds"]),
                                  (axes[1], "peak_rss_mb", "peak RSS (MB)", TARGET["peak_rss_mb"])):
        ax.loglog(xs, [r[key] for r in done], "o", label="measured")
        fit = summary["fits"][key]
        if fit is not None:
            grid = np.geomspace(xs.min(), TARGET["events"], 20)
            ax.loglog(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], "--",
                      label=f"fit, slope {fit['slope']:.2f}")
        ax.axhline(limit, color="red", lw=0.8, label="target at 2x10^7")
        ax.axvline(TARGET["events"], color="grey", lw=0.5)
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.set_title(f"seekrec data prepare: {label}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_note() -> dict[str, Any]:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_gb, 1), "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=sorted(STAGES), default="prepare")
    parser.add_argument("--events", type=int, nargs="+", default=list(DEFAULT_EVENTS))
    parser.add_argument("--work", type=Path, help="generated data and outputs (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per size")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0, help="kill a run whose RSS passes this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="seekrec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    stopped = None
    for events in sorted(args.events):
        if stopped is not None:
            rows.append({"events": events, "status": f"not run: {stopped}"})
            continue
        t0 = time.perf_counter()
        shape = generate(events, work / f"ml20m-shaped-{events}", args.seed)
        print(f"{events:>11,} events: data ready in {time.perf_counter() - t0:.1f}s", flush=True)
        row = {**shape, **STAGES[args.stage](work / f"ml20m-shaped-{events}", work, args.timeout,
                                             args.mem_cap_gb * 1024)}
        rows.append(row)
        print(f"{events:>11,} events: {row['status']}, {row['seconds']}s, peak RSS {row['peak_rss_mb']} MB, "
              f"output {row.get('output_mb')} MB", flush=True)
        if row["status"] != "ok":
            stopped = f"a smaller size {row['status']}"
    summary = summarise(rows)
    result = {"stage": args.stage,
              "command": " ".join(["python", *prepare_command(Path("<raw>"), Path("<out>"))[1:]]),
              "timeout_s": args.timeout, "mem_cap_gb": args.mem_cap_gb, "machine": machine_note(), "rows": rows,
              **summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, summary, args.figure)
    print(json.dumps({k: summary[k] for k in ("fits", "local_slopes", "at_target")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
