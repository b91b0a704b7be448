"""Simulated users talking to a running server over HTTP: recommend, click, send feedback.

Used by the demo (A/B test while tastes drift) and by the load benchmark. Each worker thread
owns an HTTP connection and a seeded RNG; the simulator is shared behind a lock because
responding updates the user's hidden state.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
import numpy as np

from seekrec.data.simulator import Simulator


@dataclass
class TrafficStats:
    """Everything the report needs, appended to by all worker threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ctr: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # arm -> per-request CTR
    latencies_ms: list[float] = field(default_factory=list)  # /recommend, client-side
    acked: list[tuple[int, float]] = field(default_factory=list)  # (offset, wall time acknowledged)
    version_first_seen: dict[str, float] = field(default_factory=dict)  # version -> wall time first served
    shown: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # arm -> [items, releases]
    errors: int = 0
    requests: int = 0
    fallbacks: int = 0

    def record(self, arm: str, ctr: float, latency_ms: float, version: str, fallback: bool, now: float,
               shown: tuple[int, int] = (0, 0)) -> None:
        with self.lock:
            self.ctr[arm].append(ctr)
            self.shown[arm][0] += shown[0]
            self.shown[arm][1] += shown[1]
            self.latencies_ms.append(latency_ms)
            self.version_first_seen.setdefault(version, now)
            self.requests += 1
            self.fallbacks += int(fallback)


def run_traffic(
    base_url: str,
    simulator: Simulator,
    *,
    duration_s: float,
    workers: int = 4,
    k: int = 10,
    new_user_share: float = 0.02,
    browse_share: float = 0.0,
    seed: int = 0,
    stats: TrafficStats | None = None,
    stop: threading.Event | None = None,
) -> TrafficStats:
    """Drive ``workers`` simulated-user loops for ``duration_s`` seconds; returns the statistics.

    Live simulator time is ``history_end + seconds since start``, so drift follows the simulator's
    ``live_time_scale``. After a share ``browse_share`` of requests the user also finds an item on
    their own (``Simulator.browse``), which is sent as an event like a click: the organic traffic
    (search, browsing) through which new releases reach the log.
    """
    stats = stats if stats is not None else TrafficStats()
    stop = stop if stop is not None else threading.Event()
    sim_lock = threading.Lock()
    start = time.time()
    n_users, n_items = simulator.config.n_users, simulator.config.n_items

    def worker(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        with httpx.Client(base_url=base_url, timeout=10.0) as client:
            while not stop.is_set() and time.time() - start < duration_s:
                new = rng.random() < new_user_share
                user = int(rng.integers(n_users + 1, n_users * 2)) if new else int(rng.integers(1, n_users + 1))
                t0 = time.perf_counter()
                try:
                    resp = client.post("/recommend", json={"user_id": str(user), "k": k, "exclude_seen": True})
                    resp.raise_for_status()
                except httpx.HTTPError:
                    with stats.lock:
                        stats.errors += 1
                    continue
                latency_ms = 1000 * (time.perf_counter() - t0)
                body = resp.json()
                slate = [int(item["item_id"]) for item in body["items"]]
                sim_time = simulator.history_end + (time.time() - start)
                with sim_lock:
                    clicks = simulator.respond(user, slate, sim_time, rng=rng) if slate else np.zeros(0, bool)
                now = time.time()
                released = sum(item > n_items for item in slate)  # items out after the history
                stats.record(body["arm"], float(np.sum(clicks)) / k, latency_ms, body["model_version"],
                             body.get("fallback", False), now, shown=(len(slate), released))
                # clicks on the slate carry its request id back (experiments credit them to its arm); an item the
                # user found by browsing answers no list
                events = [{"user_id": str(user), "item_id": str(i), "timestamp": now, "request_id": body["request_id"]}
                          for i, c in zip(slate, clicks) if c]
                if rng.random() < browse_share:
                    with sim_lock:
                        found = simulator.browse(user, sim_time, rng=rng)
                    events.append({"user_id": str(user), "item_id": str(found), "timestamp": now})
                if events:
                    try:
                        ack = client.post("/events", json={"events": events})
                        ack.raise_for_status()
                    except httpx.HTTPError:
                        with stats.lock:
                            stats.errors += 1
                        continue
                    first, last = ack.json()["offsets"]
                    acked_at = time.time()
                    with stats.lock:
                        stats.acked.extend((off, acked_at) for off in range(first, last + 1))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return stats


def freshness_seconds(acked: list[tuple[int, float]], served: list[tuple[float, int]]) -> np.ndarray:
    """Per acknowledged event: seconds until a served model version trained on it was first served.

    ``served`` lists ``(first time served, offset the version was trained through)``. Events no
    served version covered are left out (the caller reports how many).
    """
    served = sorted(served)
    out = []
    for offset, acked_at in acked:
        times = [t for t, covered in served if covered >= offset and t >= acked_at]
        if times:
            out.append(min(times) - acked_at)
    return np.asarray(out, dtype=np.float64)


def percentiles(values: list[float] | np.ndarray, qs: tuple[float, ...] = (50, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{int(q)}": float("nan") for q in qs}
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}

