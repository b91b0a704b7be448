"""Cost curves of the pipeline against the number of events (issue 17, "Scale"): wall time, peak RSS and
disk use per stage at 10^5 .. 2x10^7 events, each with its fitted log-log slope (1.0 = linear in events).

Stages (``--stages``, default all), each a ``measure_<stage>`` function in ``STAGES`` that turns one generated
dataset into one result row, written to ``benchmarks/results/scale_<stage>.json`` and ``docs/scale_<stage>.png``:

- ``prepare``: ``seekrec data prepare`` of the CSVs (target: 2x10^7 events in < 3 min and < 4 GB).
- ``startup``: ``seekrec serve`` over the prepared dataset (random-weight SASRec, empty event log, so the
  histories come from the dataset): seconds from spawn to ``/readyz`` 200, the server's peak RSS (``VmHWM``,
  polled), and ``/recommend`` latency for one known user (target: ready in < 10 s at 138k users).
- ``evaluate``: full-ranking (exact, every item) test evaluation of the same random SASRec with
  ``seekrec.evaluation.ranking.evaluate``, in a child process per size.

Data: an ML-20M-shaped ``ratings.csv`` + ``movies.csv`` (the official ml-20m layout: header
``userId,movieId,rating,timestamp``, ratings 0.5-5.0 in halves, unix-second timestamps, rows sorted by
userId then movieId, as the official file is). Users scale with events as in ML-20M (138,493 users for
20,000,263 events, at least 20 ratings each, heavy-tailed); the catalogue grows with the square root of
events up to ML-20M's 27,278 movies (1,929 at 10^5, 27,278 at 2x10^7), with Zipf popularity; no user rates a
movie twice. Generated in user chunks (bounded memory) into ``--work``, and reused by later runs.

For ``prepare``, each size runs
``python -m seekrec.cli data prepare --dataset ml-20m --raw DIR --out OUT --no-verify-counts`` in a fresh
process; its peak RSS is that child's own ``ru_maxrss`` (``os.wait4``), and its RSS is polled so a run above
``--mem-cap-gb`` is killed. In every stage, a size that times out or passes the cap is recorded as not
completed, and no larger size is tried.

    python benchmarks/scale.py
    python benchmarks/scale.py --stages startup evaluate --events 100000 1000000 --work /tmp/scale \
        --out /tmp/scale --figures /tmp/scale
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
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from seekrec.serving.process import free_port

if TYPE_CHECKING:
    import torch  # imported where it is used: this process spawns the measured children and must stay small

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # scale_<stage>.json
FIGURES = ROOT / "docs"  # scale_<stage>.png
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
MODEL_CONFIG = {"dim": 64, "n_layers": 2, "max_len": 50}  # serve_load.py's SASRec
EVAL_BATCH = 512  # TrainConfig.eval_batch_size's default


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
    env = _child_env()
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


def prepared(raw: Path, work: Path) -> Path:
    """The prepared dataset of ``raw`` under ``work``, prepared (unmeasured) when it is not there yet."""
    out = work / f"{raw.name}-prepared"
    if not (out / "manifest.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(prepare_command(raw, out), check=True, cwd=ROOT, env=_child_env(), capture_output=True)
    return out


def _child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def random_sasrec(n_items: int, seed: int) -> torch.nn.Module:
    """The benchmarks' SASRec (dim 64, 2 layers, max_len 50) with seeded random weights: neither start-up nor
    full-ranking cost depends on what the weights are."""
    import torch

    from seekrec.models.factory import build_model

    torch.manual_seed(seed)
    return build_model("sasrec", MODEL_CONFIG, n_items).eval()


def publish_random(data_dir: Path, registry: Path, seed: int) -> None:
    """Publish ``random_sasrec`` over the prepared dataset's catalogue into ``registry`` (as
    ``benchmarks/serve_load.py`` does over a simulated one). ``measure_startup`` runs it in a child: a child's
    ``ru_maxrss`` counts the RSS its parent had when it was spawned, so this process must stay small."""
    from seekrec.data.schema import InteractionData
    from seekrec.data.vocab import CATALOG_FILE, Catalog
    from seekrec.registry import ModelRegistry

    data = InteractionData.read(data_dir, verify=False)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    ModelRegistry(registry).publish(random_sasrec(data.n_items, seed), model_name="sasrec",
                                    model_config={**MODEL_CONFIG, "n_items": data.n_items},
                                    extra_files={CATALOG_FILE: catalog.to_bytes()})


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set so far (``VmHWM``, MB); 0.0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    found = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(found[1]) / 1024 if found else 0.0


def serve_command(registry: Path, events_db: Path, data_dir: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "seekrec.cli", "serve", "--registry", str(registry), "--event-log",
            f"sqlite:///{events_db}", "--data", str(data_dir), "--port", str(port)]


def measure_startup(raw: Path, work: Path, timeout_s: float, mem_cap_mb: float, seed: int = 0) -> dict[str, Any]:
    """Seconds from spawning ``seekrec serve`` (random SASRec, empty event log, histories from the prepared
    dataset) to ``/readyz`` 200, the server's peak RSS (``VmHWM``, polled), and /recommend latency for user 1."""
    data_dir = prepared(raw, work)
    with tempfile.TemporaryDirectory(prefix="seekrec-startup-", dir=work) as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-publish", str(data_dir),
                        str(root / "registry"), "--seed", str(seed)], check=True, cwd=ROOT, env=_child_env())
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = work / f"{raw.name}-startup.log"
        row: dict[str, Any] = {"status": "ok"}
        with open(log_path, "wb") as log:
            start, spawned = time.perf_counter(), time.time()
            server = subprocess.Popen(serve_command(root / "registry", root / "events.db", data_dir, port),
                                      stdout=log, stderr=subprocess.STDOUT, env=_child_env(), cwd=ROOT)
            try:
                peak = 0.0
                while True:
                    peak = max(peak, peak_rss_mb(server.pid))
                    elapsed = time.perf_counter() - start
                    if server.poll() is not None:
                        row["status"] = f"failed (exit {server.returncode})"
                        break
                    if elapsed > timeout_s or peak > mem_cap_mb:
                        row["status"] = "timed out" if peak <= mem_cap_mb else "over memory cap"
                        break
                    try:
                        if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass  # not listening yet
                    time.sleep(0.05)
                row["seconds"] = round(time.perf_counter() - start, 2)
                if row["status"] == "ok":
                    row.update(recommend_latency(base, user_id="1"))
                row["peak_rss_mb"] = round(max(peak, peak_rss_mb(server.pid)), 1)
            finally:
                if server.poll() is None:
                    server.terminate()
                    try:
                        server.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
    log_text = log_path.read_text(errors="replace").replace(str(work), "<work>")
    done = re.search(r"start-up done in ([\d.]+) s", log_text)
    row["server_reported_startup_s"] = float(done[1]) if done else None
    row["phases"] = log_phases(log_text, datetime.fromtimestamp(spawned))
    if row["status"] != "ok":
        row["log_tail"] = log_text[-2000:]
    return row


def recommend_latency(base: str, user_id: str, repeats: int = 20) -> dict[str, Any]:
    """The first ``POST /recommend`` for ``user_id`` after ready (ms), then the median of ``repeats`` more."""
    body = {"user_id": user_id, "k": 10}
    times, answer = [], None
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for _ in range(1 + repeats):
            t0 = time.perf_counter()
            response = client.post("/recommend", json=body)
            times.append(1000 * (time.perf_counter() - t0))
            response.raise_for_status()
            answer = response.json()
    return {"recommend_first_ms": round(times[0], 1), "recommend_median_ms": round(float(np.median(times[1:])), 1),
            "recommend_items": len(answer["items"]) if answer else 0}


def evaluate_child(data_dir: Path, seed: int, batch_size: int) -> dict[str, Any]:
    """In this process: the full-ranking test evaluation of ``random_sasrec`` on a prepared dataset (what
    ``measure_evaluate`` runs in a child, so that its peak RSS is this size's alone)."""
    import torch

    from seekrec.data.splits import load_split
    from seekrec.evaluation.ranking import ModelScorer, evaluate

    t0 = time.perf_counter()
    data, split = load_split(data_dir, "leave_one_out")
    eval_set = split.eval_set("test")
    loaded = time.perf_counter() - t0
    model = random_sasrec(data.n_items, seed)
    result = evaluate(ModelScorer(model, MODEL_CONFIG["max_len"]), eval_set, data.n_items, batch_size=batch_size)
    return {"load_split_s": round(loaded, 2), "evaluate_s": round(result.seconds, 2), "users_evaluated": result.n_users,
            "items_ranked": data.n_items, "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
            "hr@10": round(result.metrics["hr@10"], 5)}


def measure_evaluate(raw: Path, work: Path, timeout_s: float, mem_cap_mb: float, seed: int = 0,
                     batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """``evaluate_child`` in a fresh process: wall seconds (start-up, load and split included), its own peak RSS."""
    data_dir = prepared(raw, work)
    log_path = work / f"{raw.name}-evaluate.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-evaluate", str(data_dir), "--seed", str(seed),
           "--batch-size", str(batch_size)]
    row = run_measured(cmd, timeout_s, mem_cap_mb, log_path)
    row.pop("started")
    log_text = log_path.read_text(errors="replace").replace(str(work), "<work>")
    found = re.findall(r"^CHILD (\{.*\})$", log_text, re.M)
    if row["status"] == "ok" and found:
        row.update(json.loads(found[-1]))
    else:
        row["log_tail"] = log_text[-2000:]
    return row


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": measure_prepare, "startup": measure_startup, "evaluate": measure_evaluate}
# per stage: default seconds per size, the target (None: time and memory reported only), what
# each size runs (for the results), and the seconds past which the next larger size is not tried
STAGE_TIMEOUT = {"prepare": 600.0, "startup": 300.0, "evaluate": 600.0}
STAGE_TARGET: dict[str, dict[str, float] | None] = {
    "prepare": TARGET, "startup": {"events": 20_000_000, "seconds": 10.0}, "evaluate": None}
STAGE_SKIP_AFTER_S = {"evaluate": 240.0}
STAGE_TITLE = {"prepare": "seekrec data prepare", "startup": "seekrec serve: spawn to /readyz",
               "evaluate": "full-ranking test evaluation"}
STAGE_COMMAND = {
    "prepare": " ".join(["python", *prepare_command(Path("<raw>"), Path("<out>"))[1:]]),
    "startup": " ".join(["python", *serve_command(Path("<registry>"), Path("<tmp>/events.db"), Path("<prepared>"),
                                                  0)[1:-1], "<port>"]),
    "evaluate": "python benchmarks/scale.py --child-evaluate <prepared> --seed 0 --batch-size 512"}


# -- fitting and reporting ----------------------------------------------------------------------------------


def fit_slope(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least-squares ``log y = slope * log x + intercept``; ``None`` with fewer than two points."""
    if len(xs) < 2:
        return None
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"slope": round(float(slope), 3), "intercept": round(float(intercept), 4)}


def extrapolate(fit: dict[str, float] | None, x: float) -> float | None:
    return None if fit is None else round(float(math.exp(fit["intercept"]) * x ** fit["slope"]), 1)


def summarise(rows: list[dict[str, Any]], target: dict[str, float] | None = TARGET) -> dict[str, Any]:
    """Fits, neighbour-to-neighbour slopes and, when the stage has one, the comparison with ``target`` (its
    ``events`` and the ``seconds`` / ``peak_rss_mb`` limits it sets): measured there, or extrapolated."""
    done = [r for r in rows if r["status"] == "ok"]
    xs = [r["events"] for r in done]
    fits = {"seconds": fit_slope(xs, [r["seconds"] for r in done]),
            "peak_rss_mb": fit_slope(xs, [r["peak_rss_mb"] for r in done])}
    # slope between neighbouring sizes: start-up cost flattens the small end of the overall fit
    local = [{"from": a["events"], "to": b["events"],
              **{k: round(math.log(b[k] / a[k]) / math.log(b["events"] / a["events"]), 3)
                 for k in ("seconds", "peak_rss_mb")}} for a, b in zip(done, done[1:])]
    if target is None:
        return {"fits": fits, "local_slopes": local, "target": None, "at_target": None}
    at_target = next((r for r in done if r["events"] == target["events"]), None)
    if at_target is not None:
        comparison = {"measured": True, "seconds": at_target["seconds"], "peak_rss_mb": at_target["peak_rss_mb"]}
    else:
        comparison = {"measured": False, "seconds": extrapolate(fits["seconds"], target["events"]),
                      "peak_rss_mb": extrapolate(fits["peak_rss_mb"], target["events"])}
    for key, meets in (("seconds", "meets_time"), ("peak_rss_mb", "meets_memory")):
        if key in target:
            comparison[meets] = comparison[key] is not None and comparison[key] < target[key]
    return {"fits": fits, "local_slopes": local, "target": target, "at_target": comparison}


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path, title: str = "seekrec data prepare") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "ok"]
    xs = np.array([r["events"] for r in done], dtype=float)
    target = summary["target"] or {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "seconds", "wall seconds"), (axes[1], "peak_rss_mb", "peak RSS (MB)")):
        ax.loglog(xs, [r[key] for r in done], "o", label="measured")
        fit = summary["fits"][key]
        if fit is not None:
            grid = np.geomspace(xs.min(), max(xs.max(), target.get("events", 0)), 20)
            ax.loglog(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], "--",
                      label=f"fit, slope {fit['slope']:.2f}")
        if key in target:
            ax.axhline(target[key], color="red", lw=0.8, label=f"target at {target['events']:.0e} events")
            ax.axvline(target["events"], color="grey", lw=0.5)
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_note() -> dict[str, Any]:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "memory_gb": round(mem_gb, 1), "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def run_stage(stage: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every size of one stage, smallest first; a size that fails, or follows one slower than the stage's
    ``STAGE_SKIP_AFTER_S``, stops the larger ones."""
    timeout = args.timeout if args.timeout is not None else STAGE_TIMEOUT[stage]
    extra = {} if stage == "prepare" else {"seed": args.seed}
    rows: list[dict[str, Any]] = []
    stopped = None
    for events in sorted(args.events):
        if stopped is not None:
            rows.append({"events": events, "status": f"not run: {stopped}"})
            continue
        t0 = time.perf_counter()
        shape = generate(events, work / f"ml20m-shaped-{events}", args.seed)
        print(f"[{stage}] {events:>11,} events: data ready in {time.perf_counter() - t0:.1f}s", flush=True)
        row = {**shape, **STAGES[stage](work / f"ml20m-shaped-{events}", work, timeout, args.mem_cap_gb * 1024,
                                        **extra)}
        rows.append(row)
        print(f"[{stage}] {events:>11,} events: {row['status']}, {row.get('seconds')}s, "
              f"peak RSS {row.get('peak_rss_mb')} MB", flush=True)
        if row["status"] != "ok":
            stopped = f"a smaller size {row['status']}"
        elif row["seconds"] > STAGE_SKIP_AFTER_S.get(stage, math.inf):
            stopped = f"a smaller size took {row['seconds']:.0f} s, over {STAGE_SKIP_AFTER_S[stage]:.0f} s"
    summary = summarise(rows, STAGE_TARGET[stage])
    result = {"stage": stage, "command": STAGE_COMMAND[stage], "timeout_s": timeout, "mem_cap_gb": args.mem_cap_gb,
              "machine": machine_note(), "rows": rows, **summary}
    if stage != "prepare":
        result["model"] = {"name": "sasrec", **MODEL_CONFIG, "weights": f"random, seed {args.seed}"}
    out = args.out / f"scale_{stage}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, summary, args.figures / f"scale_{stage}.png", STAGE_TITLE[stage])
    print(json.dumps({k: summary[k] for k in ("fits", "local_slopes", "at_target")}, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", choices=list(STAGES), nargs="+", default=list(STAGES))
    parser.add_argument("--events", type=int, nargs="+", default=list(DEFAULT_EVENTS))
    parser.add_argument("--work", type=Path, help="generated data and outputs (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, help="seconds per size (default: prepare and evaluate 600, "
                                                       "startup 300)")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0, help="kill a run whose RSS passes this")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the scale_<stage>.json results")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="folder of the scale_<stage>.png figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child-evaluate", type=Path, help=argparse.SUPPRESS)  # measure_evaluate's child
    parser.add_argument("--child-publish", type=Path, nargs=2, help=argparse.SUPPRESS)  # measure_startup's child
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_publish is not None:
        publish_random(*args.child_publish, args.seed)
        return 0
    if args.child_evaluate is not None:
        print("CHILD " + json.dumps(evaluate_child(args.child_evaluate, args.seed, args.batch_size)), flush=True)
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="seekrec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        run_stage(stage, args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
