"""Shared fixtures: the real datasets beside the repository, tiny prepared datasets, and Redis.

Redis tests talk to a real server on loopback. Without one they are skipped, unless
SEEKREC_REQUIRE_SERVICES=1 (set in CI), where a missing server must fail the run instead of silently
shrinking it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seekrec.data.schema import IdMap, InteractionData, build_events

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REDIS_URL = os.environ.get("SEEKREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START_REDIS = "redis-server --daemonize yes --port 6379 --save ''"


@pytest.fixture(scope="session")
def ml100k_raw() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {path} (the shared datasets folder beside the repository)")
    return path


def tiny_data(users: list[int], items: list[int], timestamps: list[int], source: str = "tiny") -> InteractionData:
    """An InteractionData from raw id lists, with minimal side tables."""
    user_map, item_map = IdMap.fit(users), IdMap.fit(items)
    events = build_events(user_map.encode(users), item_map.encode(items), np.asarray(timestamps), np.ones(len(users)), "click")
    n_items = len(item_map)
    item_table = pa.table({
        "item_id": pa.array(np.arange(1, n_items + 1), pa.int64()),
        "title": pa.array([f"item {i}" for i in item_map.raw], pa.string()),
        "genres": pa.array([[] for _ in range(n_items)], pa.list_(pa.string())),
        "year": pa.array([None] * n_items, pa.int32()),
    })
    user_table = pa.table({"user_id": pa.array(np.arange(1, len(user_map) + 1), pa.int64())})
    return InteractionData(events, item_table, user_table, user_map, item_map, source)


@pytest.fixture(scope="session")
def sim_data_dir(tmp_path_factory) -> Path:
    """A small simulated dataset (120 users, 80 items), prepared once per test session."""
    from seekrec.data.simulator import Simulator, SimulatorConfig

    out = tmp_path_factory.mktemp("sim")
    Simulator(SimulatorConfig(n_users=120, n_items=80, mean_events_per_user=25, seed=5)).generate().write(out)
    return out


def _redis_problem(url: str) -> str | None:
    """Why Redis cannot be used for the tests, or ``None`` when it answers."""
    try:
        import redis
    except ModuleNotFoundError:
        return "the redis package is not installed (pip install 'redis>=5,<7')"
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        return f"no answer from {url} ({exc})"
    finally:
        client.close()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    problem = _redis_problem(REDIS_URL)
    if problem is not None:
        if os.environ.get("SEEKREC_REQUIRE_SERVICES") == "1":
            pytest.fail(
                f"SEEKREC_REQUIRE_SERVICES=1 but Redis is unavailable: {problem}. "
                f"Start it with `{START_REDIS}` or point SEEKREC_TEST_REDIS_URL at one.",
                pytrace=False,
            )
        pytest.skip(f"Redis unavailable: {problem}; start it with `{START_REDIS}`")
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    import redis

    prefix = f"seekrec-test:{uuid.uuid4().hex}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class ThrowawayRedis:
    """A private redis-server on a free loopback port, for outage tests: ``pause``/``resume`` freeze
    it (SIGSTOP/SIGCONT: connections hang, as on a stuck server), ``restart`` brings it back empty (no
    persistence), ``stop`` kills it (connections are refused). The shared Redis is never touched."""

    def __init__(self, directory: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        import shutil

        import redis

        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.directory)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A private Redis for one test, killed afterwards."""
    server = ThrowawayRedis(tmp_path)
    yield server
    server.stop()
