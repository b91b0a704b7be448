"""Throughput of 1 vs N `seekrec serve` replicas on one Redis event log, within a p99 latency budget.

For each replica count it starts that many server processes on loopback, all on one Redis stream and
one registry (a SASRec of dim 64, 2 layers, length 50 with random weights over a simulated catalog:
latency does not depend on training), and drives them with `serve_load.py`'s open-loop generator,
round-robin across the replicas (request i goes to replica i mod N), at each rate for a bounded time.
Open loop rather than closed loop: requests are sent on schedule whether or not earlier ones
finished, so queueing shows up as latency instead of as a politely slower client. Meanwhile a
feeder POSTs events (round-robin too) at `--event-rate`, so read-your-writes has something to read.

First it times one read-your-writes read in-process (asyncio read, the same read through a thread,
and ``HistoryTail.sync`` under the request timeout). Each row then reports p50/p95/p99, the achieved
rate, server CPU per 1,000 requests for each replica
(from /proc), the client's CPU, and the event-log reads read-your-writes made per recommendation
(`seekrec_history_syncs_total`; below 1 when requests share a read). The summary gives, per
replica count and consistency mode, the highest rate held with p99 <= the budget and no errors.

    python benchmarks/serve_replicas.py                          # the full run (minutes)
    python benchmarks/serve_replicas.py --quick                  # a few seconds, to check the script
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # serve_load.py beside this file
from serve_load import fire, publish_random_model  # noqa: E402

from seekrec.serving.process import free_port, wait_ready  # noqa: E402

DEFAULT_OUT = Path("benchmarks/results/serve_replicas.json")
MODES = {"ryw": "--read-your-writes", "bounded": "--no-read-your-writes"}


async def read_cost(event_log: str, n: int) -> dict[str, dict[str, float]]:
    """In-process wall and CPU microseconds of one read-your-writes read on an idle loop (nothing new to
    read: its usual case): the asyncio read alone, the same read through a worker thread (what it
    replaced), and the whole ``HistoryTail.sync`` under the request's timeout, as a request pays it."""
    from seekrec.data.vocab import Catalog, Vocab
    from seekrec.online.event_log import Event
    from seekrec.online.factory import open_event_log
    from seekrec.online.histories import UserHistories
    from seekrec.serving.history_tail import HistoryTail

    log = open_event_log(event_log)
    try:
        log.append([Event("cost-probe", "1", time.time())])
        tail = HistoryTail(Catalog(Vocab(["1"])), 10, None, lambda: ())
        tail.histories, tail.event_log = UserHistories(10), log
        await tail.sync()
        after = tail.histories.offset
        ways = {"aread": lambda: log.aread(after),
                "thread_read": lambda: asyncio.to_thread(log.read, after),
                "sync_with_timeout": lambda: asyncio.wait_for(tail.sync(), 0.1)}
        out = {}
        for name, call in ways.items():
            for _ in range(n // 10):  # warm-up: connections, code paths
                await call()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await call()
            out[name] = {"wall_us": 1e6 * (time.perf_counter() - wall) / n,
                         "cpu_us": 1e6 * (time.process_time() - cpu) / n}
        return out
    finally:
        await log.aclose()
        log.close()


def start_replicas(n: int, registry: Path, data_dir: Path, event_log: str, mode: str, pin: bool, workdir: Path,
                   extra: list[str]) -> list[tuple[subprocess.Popen[bytes], str]]:
    """``n`` servers sharing ``registry`` and ``event_log``; replica k pinned to CPU k mod cores with ``pin``."""
    replicas = []
    for k in range(n):
        port, logfile = free_port(), workdir / f"replica-{n}-{mode}-{k}.log"
        cpu = ["taskset", "-c", str(k % (os.cpu_count() or 1))] if pin else []
        cmd = [*cpu, sys.executable, "-m", "seekrec.cli", "serve", "--registry", str(registry),
               "--event-log", event_log, "--data", str(data_dir), "--port", str(port), MODES[mode], *extra]
        with open(logfile, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        replicas.append((proc, f"http://127.0.0.1:{port}"))
        wait_ready(replicas[-1][1], proc, logfile)
    return replicas


async def feed_events(bases: list[str], rate: float, n_users: int, n_items: int, seed: int) -> int:
    """POST one event at a time at ``rate`` per second, round-robin over ``bases``, until cancelled."""
    rng, sent = np.random.default_rng(seed), 0
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        t0 = time.perf_counter()
        try:
            while True:
                await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
                body = {"events": [{"user_id": str(rng.integers(1, n_users + 1)),
                                    "item_id": str(rng.integers(1, n_items + 1))}]}
                try:
                    async with session.post(bases[sent % len(bases)] + "/events", json=body) as resp:
                        await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass  # an overloaded replica: the recommendations' errors are what the rows report
                sent += 1
        except asyncio.CancelledError:
            return sent


async def load_step(bases: list[str], pids: list[int], rate: float, seconds: float, args: argparse.Namespace,
                    n_items: int) -> dict[str, Any]:
    """One rate: recommendations at ``rate`` with the event feeder running beside them."""
    feeder = asyncio.create_task(feed_events(bases, args.event_rate, args.users, n_items, 7)) \
        if args.event_rate > 0 else None
    try:
        row = await fire(bases, rate, seconds, args.users, 1, pids)
    finally:
        events = 0
        if feeder is not None:
            feeder.cancel()
            events = await feeder
    row["events_posted"] = events
    return row


def history_syncs(base: str) -> float:
    """The replica's ``seekrec_history_syncs_total`` (event-log reads made for read-your-writes)."""
    text = httpx.get(base + "/metrics", timeout=5.0).text
    match = re.search(r"^seekrec_history_syncs_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def sweep(n: int, mode: str, registry: Path, data_dir: Path, event_log: str, args: argparse.Namespace,
          n_items: int, workdir: Path) -> list[dict[str, Any]]:
    """Every rate against ``n`` fresh replicas, ascending; stops after two rates over the budget."""
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        replicas = start_replicas(n, registry, data_dir, event_log, mode, args.pin, workdir, args.server_args.split())
        stack.callback(stop, [proc for proc, _ in replicas])
        bases, pids = [base for _, base in replicas], [proc.pid for proc, _ in replicas]
        asyncio.run(fire(bases, 20, args.warmup_s, args.users, 99))  # warm-up
        misses = 0
        for rate in args.rates:
            syncs = [history_syncs(base) for base in bases]
            row = asyncio.run(load_step(bases, pids, rate, args.seconds, args, n_items))
            syncs = [history_syncs(base) - before for base, before in zip(bases, syncs)]
            served = [len(range(k, row["requests"], n)) for k in range(n)]  # round-robin: replica k took these
            row = {"replicas": n, "mode": mode, "n_items": n_items, **row,
                   "server_cpu_s_per_1000_by_replica": [1000 * cpu / max(s, 1) for cpu, s in
                                                        zip(row["server_cpu_s"], served)],
                   "log_reads_per_recommendation": sum(syncs) / max(row["requests"], 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            over = row["p99"] > args.budget_ms or row["errors"] > 0
            misses = misses + 1 if over else 0
            if misses >= 2:
                break
    return rows


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def delete_stream(url: str, stream: str) -> None:
    """Remove the benchmark's keys from Redis (the stream, its positions and idempotency keys)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{stream}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to compare (default: %(default)s)")
    add("--modes", nargs="+", choices=sorted(MODES), default=["ryw", "bounded"],
        help="ryw: --read-your-writes (an event-log read before each recommendation, shared by concurrent ones); "
             "bounded: other replicas' events arrive with the poller (default: %(default)s)")
    add("--items", type=int, default=3706, help="catalog size, ML-1M's (default: %(default)s)")
    add("--users", type=int, default=2000, help="users with histories (default: %(default)s)")
    add("--rates", type=float, nargs="+", default=[200, 300, 400, 500, 600, 700, 800, 1000],
        help="request rates (req/s), ascending; a sweep stops after two over the budget (default: %(default)s)")
    add("--seconds", type=float, default=8.0, help="seconds per rate (default: %(default)s)")
    add("--event-rate", type=float, default=20.0,
        help="events POSTed per second during each rate (default: %(default)s)")
    add("--warmup-s", type=float, default=2.0, help="seconds of warm-up traffic (20 req/s) before each sweep "
                                                   "(default: %(default)s)")
    add("--budget-ms", type=float, default=20.0, help="p99 latency budget (default: %(default)s)")
    add("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the shared event log (default: %(default)s)")
    add("--pin", action="store_true", help="replica k on CPU k mod cores (Linux taskset)")
    add("--server-args", default="", help="extra `seekrec serve` flags, e.g. --server-args='--max-wait-ms 1'")
    add("--quick", action="store_true", help="a short check of the script on a tiny setting (500 items, 200 users, "
                                             "rates 50 100, 2 s each, ryw only); writes nothing unless --out is given")
    add("--out", type=Path, default=None, help=f"results JSON (default: {DEFAULT_OUT}; with --quick: none)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.users, args.rates, args.seconds, args.modes = 500, 200, [50.0, 100.0], 2.0, ["ryw"]
        args.warmup_s = 0.5
        args.event_rate = min(args.event_rate, 10.0)
    elif args.out is None:
        args.out = DEFAULT_OUT
    return args


def main() -> None:
    args = parse_args()
    stream = f"seekrec-bench:{uuid.uuid4().hex}:events"
    event_log = f"{args.redis}?stream={stream}"
    rows: list[dict[str, Any]] = []
    try:
        cost = asyncio.run(read_cost(event_log, 300 if args.quick else 3000))
        print("one read-your-writes read, in-process:", json.dumps(cost), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            data_dir, registry = publish_random_model(Path(tmp), args.items, args.users, seed=0)
            for mode in args.modes:
                for n in args.replicas:
                    rows += sweep(n, mode, registry, data_dir, event_log, args, args.items, Path(tmp))
    finally:
        delete_stream(args.redis, stream)
    held: dict[str, dict[str, float | None]] = {}
    for mode in args.modes:
        for n in args.replicas:
            ok = [r["rate"] for r in rows if r["replicas"] == n and r["mode"] == mode
                  and r["p99"] <= args.budget_ms and not r["errors"]]
            held.setdefault(mode, {})[str(n)] = max(ok) if ok else None
    out = {"command": "python " + " ".join(sys.argv),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "note": ("replica k pinned to CPU k mod cores; " if args.pin else "") + "client, replicas and Redis share "
                   "the machine's cores; events POSTed beside the load at " + f"{args.event_rate:g}/s",
           "budget_ms": args.budget_ms, "max_rate_within_budget": held, "read_your_writes_read_cost": cost,
           "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("| replicas | mode | rate (req/s) | achieved | p50 ms | p99 ms | errors | server CPU s/1000 req, per replica "
          "| log reads/rec |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = ", ".join(f"{c:.2f}" for c in r["server_cpu_s_per_1000_by_replica"])
        print(f"| {r['replicas']} | {r['mode']} | {r['rate']:.0f} | {r['achieved_rate']:.0f} | {r['p50']:.1f} "
              f"| {r['p99']:.1f} | {r['errors']} | {cpu} | {r['log_reads_per_recommendation']:.2f} |")
    print(f"highest rate with p99 <= {args.budget_ms:.0f} ms: {held}")


if __name__ == "__main__":
    main()
