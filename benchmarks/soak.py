"""Bounded soak of the real-time loop: mixed traffic, the online trainer publishing, a Redis outage.

It publishes a small SASRec trained on a simulated dataset, starts a throwaway Redis (AOF, fsync
always) on a free loopback port, then `seekrec serve` and `seekrec stream-train` on one Redis stream,
and sends open-loop traffic (a share of POST /events, the rest POST /recommend) for ``--seconds``.
At ``--outage-at`` of the run Redis is killed (SIGKILL) and restarted ``--outage-seconds`` later from
its append-only file. It reports requests and errors by status code, acknowledged events against the
events in the log (every acknowledged event must be there), the trainer's published versions and
whether it survived, and the resident memory of server and trainer over time (it must level off).

    python benchmarks/soak.py --seconds 600 --rate 60 --out benchmarks/results/soak.json

Everything runs on 127.0.0.1 and stops by itself; the request loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

from seekrec.data.schema import InteractionData
from seekrec.data.simulator import Simulator, SimulatorConfig
from seekrec.online.factory import open_event_log
from seekrec.registry import ModelRegistry
from seekrec.serving.process import free_port, wait_ready
from seekrec.training.experiment import ExperimentConfig, train_experiment

TINY_MODEL = ["model.name=sasrec", "model.dim=32", "model.n_layers=1", "data.max_len=20", "train.max_epochs=3",
              "train.batch_size=128", "loss.name=full_softmax"]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB; NaN once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


class Redis:
    """A throwaway redis-server whose data survives a kill: append-only file, fsync on every write."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        self.port, self.dir = free_port(), workdir / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            ping = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def prepare(work: Path, users: int, items: int) -> tuple[Path, Path, list[str], list[str]]:
    """Simulated data, a trained SASRec published as v000001; returns data dir, registry, raw users, raw items."""
    data_dir, registry = work / "data", work / "registry"
    Simulator(SimulatorConfig(n_users=users, n_items=items, mean_events_per_user=30, seed=0)).generate().write(data_dir)
    train_experiment(ExperimentConfig.load(None, TINY_MODEL), data_dir, work / "run")
    ModelRegistry(registry).publish_run(work / "run")
    data = InteractionData.read(data_dir)
    return data_dir, registry, [str(u) for u in data.user_ids.raw.tolist()], [str(i) for i in data.item_ids.raw.tolist()]


async def traffic(base: str, args: argparse.Namespace, users: list[str], items: list[str], redis: Redis,
                  pids: dict[str, int]) -> dict:
    """Open-loop mixed traffic with the outage in the middle; returns counts, acknowledged events, memory."""
    rng = np.random.default_rng(1)
    n = int(args.rate * args.seconds)
    codes: collections.Counter[str] = collections.Counter()  # "<path> <status>"
    phases: collections.Counter[str] = collections.Counter()  # "<before|during|after the outage> <status>"
    acknowledged: set[tuple[str, str, float]] = set()
    memory: list[dict] = []
    outage = {"kill_at_s": args.outage_at * args.seconds, "restart_at_s": args.outage_at * args.seconds
              + args.outage_seconds}
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(base, timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as client:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            user = users[int(rng.integers(len(users)))]
            if rng.random() < args.event_share:
                event = (user, items[int(rng.integers(len(items)))], 1.9e9 + i)  # unique time: identifies it
                body, path = {"events": [{"user_id": event[0], "item_id": event[1], "timestamp": event[2]}]}, "/events"
            else:
                event, body, path = None, {"user_id": user, "k": 10}, "/recommend"
            sent = time.perf_counter() - t0
            phase = ("before" if sent < outage["kill_at_s"] else "during" if sent < outage["restart_at_s"]
                     else "after")
            try:
                async with client.post(path, json=body) as resp:
                    await resp.read()
                    codes[f"{path} {resp.status}"] += 1
                    phases[f"{phase} {resp.status}"] += 1
                    if resp.status == 200 and event is not None:
                        acknowledged.add(event)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                codes[f"{path} {type(exc).__name__}"] += 1
                phases[f"{phase} {type(exc).__name__}"] += 1

        async def monitor() -> None:
            killed = restarted = False
            while (elapsed := time.perf_counter() - t0) < args.seconds + 1:
                if not killed and elapsed >= outage["kill_at_s"]:
                    redis.kill()
                    killed = True
                if killed and not restarted and elapsed >= outage["restart_at_s"]:
                    await asyncio.to_thread(redis.start)
                    restarted = True
                memory.append({"t": round(elapsed, 1), **{k: round(rss_mib(p), 1) for k, p in pids.items()}})
                await asyncio.sleep(args.sample_every)

        watcher = asyncio.create_task(monitor())
        tasks = []
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        await watcher
    return {"requests": n, "codes": dict(sorted(codes.items())), "by_phase": dict(sorted(phases.items())),
            "acknowledged": acknowledged,
            "memory_samples": memory, "outage": outage}


def memory_summary(samples: list[dict], key: str) -> dict:
    """First, last and peak RSS, and the growth over the second half (levelling off: close to 0)."""
    values = [s[key] for s in samples if s.get(key) == s.get(key)]
    if not values:
        return {}
    half = values[len(values) // 2:]
    return {"first_mib": values[0], "last_mib": values[-1], "peak_mib": max(values),
            "second_half_growth_mib": round(half[-1] - half[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the traffic phase")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second, open loop")
    parser.add_argument("--event-share", type=float, default=0.5, help="share of requests that post an event")
    parser.add_argument("--outage-at", type=float, default=0.5, help="when Redis is killed, as a share of the run")
    parser.add_argument("--outage-seconds", type=float, default=20.0, help="how long Redis stays down")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="seekrec-soak-") as tmp:
        work = Path(tmp)
        data_dir, registry, users, items = prepare(work, args.users, args.items)
        redis = Redis(work)
        redis.start()
        url = f"redis://127.0.0.1:{redis.port}/0?stream=soak:events"
        port = free_port()
        cli = [sys.executable, "-m", "seekrec.cli"]
        logs = {name: open(work / f"{name}.log", "w") for name in ("server", "trainer")}
        server = subprocess.Popen([*cli, "serve", "--registry", str(registry), "--event-log", url, "--data",
                                   str(data_dir), "--port", str(port)], stdout=logs["server"], stderr=subprocess.STDOUT)
        trainer = subprocess.Popen([*cli, "stream-train", "--registry", str(registry), "--event-log", url, "--data",
                                    str(data_dir), "--state", str(work / "online"), "--publish-every-seconds", "5",
                                    "--threads", "1"], stdout=logs["trainer"], stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, server, work / "server.log")
            started = time.time()
            result = asyncio.run(traffic(base, args, users, items, redis,
                                         {"server": server.pid, "trainer": trainer.pid}))
            time.sleep(10)  # let the trainer catch up and publish
            trainer_alive = trainer.poll() is None
            with open_event_log(url) as log:
                logged = {(e.user_id, e.item_id, e.timestamp) for e in log.read(0, 10**9)}
        finally:
            for proc in (server, trainer):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
            redis.kill()
            for fh in logs.values():
                fh.close()
        acknowledged = result.pop("acknowledged")
        reg = ModelRegistry(registry)
        trainer_log = (work / "trainer.log").read_text(errors="replace")
        report = {
            "command": "python " + " ".join(sys.argv),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "seconds": args.seconds, "rate": args.rate, "event_share": args.event_share,
            **{k: v for k, v in result.items() if k != "memory_samples"},
            "events": {"acknowledged": len(acknowledged), "in_log": len(logged),
                       "acknowledged_missing_from_log": len(acknowledged - logged),
                       "in_log_not_acknowledged": len(logged - acknowledged)},
            "trainer": {"alive_at_end": trainer_alive, "exit_code": trainer.returncode,
                        # CURRENT's number: v000001 is the offline model, retention keeps only the newest
                        "versions_published": int(reg.current()[1:]) - 1,
                        "traceback_in_log": "Traceback" in trainer_log,
                        "last_log_lines": trainer_log.strip().splitlines()[-3:] if not trainer_alive else []},
            "memory": {k: memory_summary(result["memory_samples"], k) for k in ("server", "trainer")},
            "wall_seconds": round(time.time() - started, 1),
            "memory_samples": result["memory_samples"],
        }
    print(json.dumps({k: v for k, v in report.items() if k != "memory_samples"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
