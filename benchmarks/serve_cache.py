"""The response cache under load: the same Zipf-distributed user mix against `seekrec serve` with the cache off and
on, in one run, so the two are compared on the same (noisy, shared) machine minutes apart.

For each catalog size it publishes the random SASRec of ``serve_load.py``, starts two servers (cache off, cache
on), warms both with the same request stream (for the cache: what a server that has been up a while holds),
then sends open-loop POST /recommend traffic at each rate to one and then the other (taking turns, so that a
burst of other load on a shared machine hits both sides of the comparison). Users are drawn Zipf-distributed (exponent ``--zipf``)
over ``--users`` users, and after ``--click-prob`` of the answers the user clicks the top item (POST /events:
their cached list is invalidated, and the next one must not contain that item). Reports p50/p95/p99, server CPU per request, the hit rate of each run (from the server's
``seekrec_cache_requests_total``), the highest rate held with p99 <= the budget, and the on/off ratio.

    python benchmarks/serve_cache.py --items 3706 27000 --rates 300 500 700 1000 1400 --seconds 8 \
        --out benchmarks/results/serve_cache.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import fire, publish_random_model  # noqa: E402

from seekrec.serving.process import free_port, wait_ready  # noqa: E402

_SERIES = re.compile(r'^seekrec_cache_requests_total\{cache="response",result="(\w+)"\} (\S+)$', re.M)


def cache_counts(base: str) -> dict[str, float]:
    """The server's response-cache lookups so far, by result."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {result: float(value) for result, value in _SERIES.findall(text)}


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float | None:
    hits = after.get("hit", 0.0) - before.get("hit", 0.0)
    lookups = hits + after.get("miss", 0.0) - before.get("miss", 0.0)
    return hits / lookups if lookups else None


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[3706, 27000])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--zipf", type=float, default=1.1, help="exponent of the users' Zipf distribution")
    parser.add_argument("--click-prob", type=float, default=0.1,
                        help="share of answers after which the user clicks the top item (POST /events), which "
                             "invalidates their cached list")
    parser.add_argument("--rates", type=float, nargs="+", default=[300, 500, 700, 1000, 1400])
    parser.add_argument("--seconds", type=float, default=8.0, help="per rate (bounded)")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="warm-up traffic at 200 req/s before the rates")
    parser.add_argument("--budget-ms", type=float, default=20.0, help="p99 latency budget")
    parser.add_argument("--cache-size", type=int, default=20_000, help="--response-cache-size of the 'on' server")
    parser.add_argument("--server-args", default="", help="extra `seekrec serve` flags for both servers")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = {"off": ["--response-cache-size", "0"], "on": ["--response-cache-size", str(args.cache_size)]}
    results = []
    for n_items in args.items:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            data_dir, registry = publish_random_model(Path(tmp), n_items, args.users, seed=0)
            servers = {}
            for cache, flags in settings.items():
                port, log = free_port(), Path(tmp) / f"server-{cache}.log"
                cmd = [sys.executable, "-m", "seekrec.cli", "serve", "--registry", str(registry),
                       "--event-log", f"sqlite:///{Path(tmp) / f'events-{cache}.db'}", "--data", str(data_dir),
                       "--port", str(port), *flags, *args.server_args.split()]
                server = subprocess.Popen(cmd, stdout=stack.enter_context(open(log, "w")), stderr=subprocess.STDOUT)
                stack.callback(_stop, server)
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, server, log)
                servers[cache] = (base, server)
            for base, _ in servers.values():  # the same warm-up stream for both
                asyncio.run(fire(base, 200, args.warmup_s, args.users, 99, zipf=args.zipf, click_prob=args.click_prob))
            for step, rate in enumerate(args.rates):
                # off and on take turns at each rate (and which goes first alternates), so a burst of other
                # load on the machine hits both sides of a comparison about equally
                for cache in (list(settings) if step % 2 == 0 else list(settings)[::-1]):
                    base, server = servers[cache]
                    before = cache_counts(base)
                    row = {"n_items": n_items, "cache": cache,
                           **asyncio.run(fire(base, rate, args.seconds, args.users, 1, server.pid, args.zipf,
                                              args.click_prob))}
                    row["hit_rate"] = hit_rate(before, cache_counts(base))
                    results.append(row)
                    print(json.dumps(row), flush=True)
    results.sort(key=lambda r: (r["n_items"], r["cache"] != "off", r["rate"]))
    held: dict[str, dict[str, Any]] = {}
    for n_items in args.items:
        held[str(n_items)] = {}
        for cache in settings:
            ok = [r["rate"] for r in results if r["n_items"] == n_items and r["cache"] == cache
                  and r["p99"] <= args.budget_ms and not r["errors"]]
            held[str(n_items)][cache] = max(ok) if ok else None
        off, on = held[str(n_items)]["off"], held[str(n_items)]["on"]
        held[str(n_items)]["ratio"] = on / off if on and off else None
        # the highest rate offered was held: the true figure is at least this (offer higher rates to find it)
        held[str(n_items)]["at_least"] = [c for c in settings if held[str(n_items)][c] == max(args.rates)]
    out = {"command": "python " + " ".join(sys.argv),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "note": "client and both servers share the machine's cores (traffic to one server at a time, off and on "
                   "taking turns at each rate); users Zipf-distributed",
           "users": args.users, "zipf": args.zipf, "click_prob": args.click_prob, "budget_ms": args.budget_ms, "cache_size": args.cache_size,
           "max_rate_within_budget": held, "rows": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("| items | cache | rate (req/s) | achieved | p50 ms | p95 ms | p99 ms | errors | hit rate | server CPU ms/req |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        hits = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
        print(f"| {r['n_items']} | {r['cache']} | {r['rate']:.0f} | {r['achieved_rate']:.0f} | {r['p50']:.1f} "
              f"| {r['p95']:.1f} | {r['p99']:.1f} | {r['errors']} | {hits} | {r['server_cpu_ms_per_request']:.2f} |")
    print(f"highest rate with p99 <= {args.budget_ms:.0f} ms: {held}")


if __name__ == "__main__":
    main()
