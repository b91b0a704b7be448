"""Load test of `seekrec serve` on loopback at fixed request rates.

For each catalog size it publishes a SASRec (dim 64, 2 layers; random weights: latency does not
depend on training) over a simulated catalog, starts one server process on 127.0.0.1, and sends
open-loop POST /recommend traffic at each rate for a bounded time (requests are scheduled at fixed
times whether or not earlier ones finished, so queueing shows up as latency). Reports p50/p95/p99
and the highest rate held with p99 <= the latency budget.

    python benchmarks/serve_load.py --items 3706 27000 --rates 100 200 300 500 --seconds 8 \
        --out benchmarks/results/serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import numpy as np

from seekrec.data.simulator import Simulator, SimulatorConfig
from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.models.factory import build_model
from seekrec.registry import ModelRegistry
from seekrec.serving.process import free_port, wait_ready


def publish_random_model(root: Path, n_items: int, n_users: int, seed: int) -> tuple[Path, Path]:
    sim = Simulator(SimulatorConfig(n_users=n_users, n_items=n_items, mean_events_per_user=20, seed=seed))
    data = sim.generate()
    data_dir = root / "data"
    data.write(data_dir)
    config = {"dim": 64, "n_layers": 2, "max_len": 50}
    model = build_model("sasrec", config, data.n_items)
    catalog = Catalog.from_data(data.item_ids, data.interactions()[1])
    ModelRegistry(root / "registry").publish(model, model_name="sasrec", model_config={**config, "n_items": data.n_items},
                                             extra_files={CATALOG_FILE: catalog.to_bytes()})
    return data_dir, root / "registry"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to report CPU per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def draw_users(rng: np.random.Generator, n_users: int, n: int, zipf: float | None = None) -> np.ndarray:
    """``n`` user ids in ``1..n_users``: uniform, or Zipf-distributed with exponent ``zipf`` (the user of
    popularity rank r is drawn with probability proportional to r^-zipf; ranks go to ids in a seeded random
    order, so the heavy users are not simply the lowest ids)."""
    if zipf is None:
        return rng.integers(1, n_users + 1, n)
    weights = np.arange(1, n_users + 1, dtype=np.float64) ** -zipf
    ranks = rng.choice(n_users, size=n, p=weights / weights.sum())
    return np.random.default_rng(12345).permutation(n_users)[ranks] + 1


async def fire(base: str | Sequence[str], rate: float, seconds: float, n_users: int, seed: int,
               server_pid: int | Sequence[int] | None = None, zipf: float | None = None,
               click_prob: float = 0.0) -> dict:
    """Open-loop: request i starts at t0 + i / rate; returns latency percentiles, achieved rate and CPU
    per request of the server(s) and of this client (they share the machine's cores).

    ``base``: one server, or several replicas taking turns (request i goes to ``base[i % n]``, a
    round-robin balancer); ``server_pid``: their processes, whose CPU seconds are also reported one by
    one (``server_cpu_s``). ``zipf``: draw users Zipf-distributed (``draw_users``), not uniformly.
    ``click_prob``: after that share of the answers, the user clicks the top item (POST /events, not
    counted in the latencies), as live traffic does; it invalidates their cached list.

    aiohttp rather than httpx: the client shares the cores with the server, and aiohttp costs a
    fraction of httpx's CPU per request, so less of the measured latency is the load generator's.
    """
    bases = [base] if isinstance(base, str) else list(base)
    pids = [] if server_pid is None else [server_pid] if isinstance(server_pid, int) else list(server_pid)
    # this process holds torch and the model code: a full collection of that heap stalls the loop for
    # ~200 ms, which would show up as server latency; frozen objects are never collected
    gc.collect()
    gc.freeze()
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    users = draw_users(rng, n_users, n, zipf)
    bodies = [json.dumps({"user_id": str(u), "k": 10}).encode() for u in users]
    clicks = np.random.default_rng(seed + 1).random(n) < click_prob
    event_errors = 0
    latencies: list[float] = []
    late: list[float] = []  # how long after its scheduled time each request was sent: the client's own lag
    errors = 0
    timeout = aiohttp.ClientTimeout(total=5.0)
    headers = {"content-type": "application/json"}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(aiohttp.ClientSession(
            b, connector=aiohttp.TCPConnector(limit=256), timeout=timeout, headers=headers)) for b in bases]
        server_cpu, client_cpu = [cpu_seconds(pid) for pid in pids], time.process_time()
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal errors, event_errors
            start = time.perf_counter()
            late.append(1000 * (start - (t0 + i / rate)))
            try:
                async with clients[i % len(clients)].post("/recommend", data=bodies[i]) as resp:
                    answer = await resp.read()
                    resp.raise_for_status()
                latencies.append(1000 * (time.perf_counter() - start))
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                return
            items = json.loads(answer)["items"] if clicks[i] else []
            if items:
                event = {"events": [{"user_id": str(users[i]), "item_id": items[0]["item_id"]}]}
                try:
                    async with clients[i % len(clients)].post("/events", data=json.dumps(event)) as resp:
                        await resp.read()
                        resp.raise_for_status()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    event_errors += 1

        tasks = []
        for i in range(n):  # one task per request, created at its send time (3000 sleeping tasks lag the loop)
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - client_cpu
        server_cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, server_cpu)]
    lat = np.asarray(latencies)
    pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else float("nan") for q in (50, 95, 99)}
    return {"rate": rate, "requests": n, "ok": len(latencies), "errors": errors, "clicks": int(clicks.sum()),
            "event_errors": event_errors,
            "achieved_rate": len(latencies) / elapsed, **pct,
            "client_send_lag_p99_ms": float(np.percentile(late, 99)) if late else float("nan"),
            "server_cpu_ms_per_request": 1000 * sum(server_cpu) / max(n, 1) if pids else float("nan"),
            "server_cpu_s": server_cpu, "client_cpu_ms_per_request": 1000 * client_cpu / max(n, 1)}


@contextlib.contextmanager
def running_server(registry: Path, data_dir: Path, work: Path, server_args: Sequence[str],
                   pin: bool = False) -> Iterator[tuple[str, int]]:
    """``seekrec serve`` over ``registry`` in a child process (on CPU 0 when ``pin``), its event log and log file
    in ``work``; yields its base url and pid once ready, terminates it on exit."""
    port, log = free_port(), work / f"server-{time.monotonic_ns()}.log"
    cmd = [*(["taskset", "-c", "0"] if pin else []), sys.executable, "-m", "seekrec.cli", "serve",
           "--registry", str(registry), "--event-log", f"sqlite:///{work / f'events-{port}.db'}",
           "--data", str(data_dir), "--port", str(port), *server_args]
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server, log)
            yield base, server.pid
        finally:
            server.terminate()
            server.wait(timeout=15)


def held_rate(rows: Sequence[dict], budget_ms: float) -> float | None:
    """The highest offered rate of ``rows`` (``fire`` results) answered without errors at p99 <= ``budget_ms``."""
    ok = [r["rate"] for r in rows if r["p99"] <= budget_ms and not r["errors"]]
    return max(ok) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[3706, 27000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--rates", type=float, nargs="+", default=[100, 200, 300, 500])
    parser.add_argument("--seconds", type=float, default=8.0, help="per rate (bounded)")
    parser.add_argument("--budget-ms", type=float, default=20.0, help="p99 latency budget")
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 0, this client on the other CPUs, so the load generator does not "
                             "steal the server's core (Linux taskset)")
    parser.add_argument("--zipf", type=float, default=None,
                        help="draw users Zipf-distributed with this exponent (e.g. 1.1) instead of uniformly")
    parser.add_argument("--server-args", default="", help="extra `seekrec serve` flags, e.g. --server-args='--max-wait-ms 1'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pin = args.pin and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    results = []
    for n_items in args.items:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir, registry = publish_random_model(Path(tmp), n_items, args.users, seed=0)
            with running_server(registry, data_dir, Path(tmp), args.server_args.split(), pin) as (base, pid):
                asyncio.run(fire(base, 20, 2.0, args.users, 99))  # warm-up
                for rate in args.rates:
                    row = {"n_items": n_items, **asyncio.run(fire(base, rate, args.seconds, args.users, 1, pid, args.zipf))}
                    results.append(row)
                    print(json.dumps(row), flush=True)
    held = {str(n): held_rate([r for r in results if r["n_items"] == n], args.budget_ms) for n in args.items}
    out = {"command": "python " + " ".join(sys.argv), "machine": {"platform": platform.platform(),
           "cpus": os.cpu_count()},
           "note": "server pinned to CPU 0, client to the others" if pin else "client and server share the machine's cores",
           "budget_ms": args.budget_ms, "max_rate_within_budget": held, "rows": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("| items | rate (req/s) | achieved | p50 ms | p95 ms | p99 ms | errors | server CPU ms/req | client CPU ms/req |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n_items']} | {r['rate']:.0f} | {r['achieved_rate']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} "
              f"| {r['p99']:.1f} | {r['errors']} | {r['server_cpu_ms_per_request']:.2f} "
              f"| {r['client_cpu_ms_per_request']:.2f} |")
    print(f"highest rate with p99 <= {args.budget_ms:.0f} ms: {held}")


if __name__ == "__main__":
    main()
