"""Replicated serving: several servers on one Redis event log, one registry and one feature store.

An event acknowledged by any replica shows in every replica's next recommendation (read-your-writes),
a published version reaches every replica, items added on one replica join the others, and replicas
sharing a pipeline feature store count each event once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from seekrec.data.vocab import Catalog, Vocab
from seekrec.online.event_log import Event, LoggedEvent
from seekrec.online.factory import open_event_log
from seekrec.online.histories import UserHistories
from seekrec.online.sqlite_log import SqliteEventLog
from seekrec.registry import ModelRegistry
from seekrec.serving.app import create_app
from seekrec.serving.history_tail import HistoryTail
from seekrec.serving.process import free_port
from seekrec.serving.settings import ServeSettings
from tests.features.helpers import assert_batches_equal

BOUND_S = 60.0  # every wait in this file is bounded by this


def _items(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _wait_for(predicate: Callable[[], bool], what: str, seconds: float = BOUND_S) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {seconds:.0f} s"
        time.sleep(0.05)


# -- read-your-writes in one process: another replica's append is simulated by a second log handle -------------
@pytest.mark.parametrize("read_your_writes", [True, False])
def test_an_event_another_replica_logged_shows_in_the_next_recommendation(
        settings: ServeSettings, redis_url: str, redis_prefix: str, read_your_writes: bool) -> None:
    url = f"{redis_url}?stream={redis_prefix}:events"
    # the tail poller never runs during the test, so only the read-your-writes read can bring the event in
    settings = replace(settings, event_log=url, poll_interval_s=600.0, read_your_writes=read_your_writes)
    with TestClient(create_app(settings)) as client, open_event_log(url) as other_replica:
        top = _items(client.post("/recommend", json={"user_id": "7", "k": 10}))[0]
        other_replica.append([Event("7", top, time.time())])
        after = _items(client.post("/recommend", json={"user_id": "7", "k": 10}))
        metrics = client.get("/metrics").text
    if read_your_writes:
        assert top not in after  # filtered as seen: the history holds the other replica's event
        assert "seekrec_history_syncs_total 2.0" in metrics
    else:  # the control: without the read the event waits for the poller, so the list is unchanged
        assert top in after
        assert "seekrec_history_syncs_total 0.0" in metrics


def test_a_session_token_reads_the_log_only_while_this_replica_is_behind_it(
        settings: ServeSettings, redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?stream={redis_prefix}:events"
    settings = replace(settings, event_log=url, poll_interval_s=600.0)  # read_your_writes off
    with TestClient(create_app(settings)) as client, open_event_log(url) as other_replica:
        top = _items(client.post("/recommend", json={"user_id": "7", "k": 10}))[0]
        token = other_replica.append([Event("7", top, time.time())])[-1]  # what POST /events answers
        after = _items(client.post("/recommend", json={"user_id": "7", "k": 10, "min_offset": token}))
        again = _items(client.post("/recommend", json={"user_id": "7", "k": 10, "min_offset": token}))
        metrics = client.get("/metrics").text
    assert top not in after and after == again
    assert "seekrec_history_syncs_total 1.0" in metrics  # the second request was not behind: no read


class _SlowLog(SqliteEventLog):
    """A log whose reads take their snapshot first and then stall, as a read over a network does."""

    def __init__(self, path: Path, stall_s: float) -> None:
        super().__init__(path)
        self.stall_s, self.reads = stall_s, 0

    def read(self, after: int, limit: int = 1000, block_ms: int = 0) -> list[LoggedEvent]:
        events = super().read(after, limit, block_ms)
        self.reads += 1
        time.sleep(self.stall_s)
        return events


def _tail(event_log: SqliteEventLog) -> HistoryTail:
    tail = HistoryTail(Catalog(Vocab([str(i) for i in range(1, 11)])), 20, None, lambda: ())
    tail.histories, tail.event_log = UserHistories(20), event_log
    return tail


def test_concurrent_requests_share_log_reads_and_none_misses_an_earlier_event(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, list[int], int]:
        with _SlowLog(tmp_path / "events.db", stall_s=0.05) as log:
            tail = _tail(log)
            first = asyncio.create_task(tail.sync())  # a read starts now, before the event below
            await asyncio.sleep(0.01)
            log.append([Event("u", "3", 1.0)])  # acknowledged while that read is under way
            # fifty requests arrive after the acknowledgement: they must not be served by the read under
            # way (it missed the event), and they all share the next one
            await asyncio.gather(first, *(tail.sync() for _ in range(50)))
            return log.reads, tail.get("u"), tail.histories.offset if tail.histories else -1

    reads, history, offset = asyncio.run(scenario())
    assert history == [3] and offset == 1
    assert reads == 2  # 51 callers, 2 reads


def test_a_stuck_log_delays_a_recommendation_by_at_most_the_timeout(settings: ServeSettings,
                                                                    throwaway_redis: Any) -> None:
    settings = replace(settings, event_log=f"{throwaway_redis.url}?stream=stuck:events&socket_timeout=2",
                       read_your_writes=True, read_your_writes_timeout_ms=100.0, poll_interval_s=600.0)
    with TestClient(create_app(settings)) as client:
        before = _items(client.post("/recommend", json={"user_id": "7", "k": 5}))
        throwaway_redis.pause()  # connections hang, as on a stuck server
        try:
            started = time.monotonic()
            during = client.post("/recommend", json={"user_id": "7", "k": 5})
            took = time.monotonic() - started
        finally:
            throwaway_redis.resume()
        metrics = client.get("/metrics").text
    assert _items(during) == before  # answered from the histories as they were
    assert took < 1.0, f"a stuck log held a recommendation for {took:.2f} s"
    assert 'seekrec_errors_total{kind="read_your_writes"} 1.0' in metrics


# -- replicas as separate processes behind a round-robin client ---------------------------------------------
class RoundRobin:
    """The simplest load balancer: each request goes to the next replica in turn; says which served it."""

    def __init__(self, bases: Sequence[str]) -> None:
        self.clients = [httpx.Client(base_url=base, timeout=10.0) for base in bases]
        self.turn = 0

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, httpx.Response]:
        replica, self.turn = self.turn, (self.turn + 1) % len(self.clients)
        return replica, self.clients[replica].post(path, json=body)

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def replicas(tmp_path: Path, registry: ModelRegistry, sim_data_dir: Path, redis_url: str,
             redis_prefix: str) -> Iterator[list[str]]:
    """Two ``seekrec serve`` processes on loopback sharing the registry and one Redis stream."""
    procs, bases, logs = [], [], []
    try:
        for n in range(2):
            port, logfile = free_port(), tmp_path / f"replica-{n}.log"
            cmd = [sys.executable, "-m", "seekrec.cli", "serve", "--registry", str(registry.root),
                   "--event-log", f"{redis_url}?stream={redis_prefix}:events", "--data", str(sim_data_dir),
                   "--port", str(port), "--poll-interval", "0.5", "--read-your-writes", "--max-wait-ms", "1"]
            with open(logfile, "w") as fh:
                procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT))
            bases.append(f"http://127.0.0.1:{port}")
            logs.append(logfile)
        for proc, base, logfile in zip(procs, bases, logs):
            _wait_ready(base, proc, logfile)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(base: str, proc: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"replica exited with {proc.returncode}:\n{logfile.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    pytest.fail(f"replica {base} not ready within {BOUND_S:.0f} s:\n{logfile.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_replica_processes_share_events_and_versions(replicas: list[str], registry: ModelRegistry,
                                                         variant: Callable[..., str]) -> None:
    balancer = RoundRobin(replicas)
    try:
        for user in ("3", "8", "21", "40"):  # the event goes through one replica, the next request the other
            reader, before = balancer.post("/recommend", {"user_id": user, "k": 10})
            clicked = _items(before)[0]
            writer, ack = balancer.post("/events", {"events": [{"user_id": user, "item_id": clicked}]})
            assert ack.status_code == 200, ack.text
            again, after = balancer.post("/recommend", {"user_id": user, "k": 10})
            assert writer != again == reader
            assert clicked not in _items(after), f"replica {again} did not see the event replica {writer} logged"

        new = variant(registry, seed=3)  # published and promoted: both replicas must swap to it
        served: list[list[str]] = [[], []]

        def both_serve_new() -> bool:
            for _ in range(2):
                replica, response = balancer.post("/recommend", {"user_id": "5", "k": 5})
                assert response.status_code == 200, response.text
                served[replica].append(response.json()["model_version"])
            return all(versions and versions[-1] == new for versions in served)

        started = time.monotonic()
        _wait_for(both_serve_new, f"both replicas serving {new}", seconds=30.0)
        swap_s = time.monotonic() - started
    finally:
        balancer.close()
    for versions in served:
        assert versions == sorted(versions)  # once swapped, a replica never serves the old version again
    assert swap_s < 30.0


# -- pipeline arms: one shared feature store, items added on one replica ----------------------------------------
def test_replicas_share_one_pipeline_feature_store_and_count_each_event_once(
        tmp_path: Path, registry: ModelRegistry, pipeline_bundle: Path, sim_data_dir: Path, redis_url: str,
        redis_prefix: str) -> None:
    from seekrec.serving.pipeline_predictor import PipelinePredictor

    version = registry.publish_bundle(pipeline_bundle, kind="pipeline", name="two-tower+din")
    store_url = f"{redis_url}?prefix={redis_prefix}:features"
    events = [LoggedEvent(str(1 + k % 7), str(1 + k % 30), 2e9 + k, offset=k + 1) for k in range(40)]
    with open_event_log(tmp_path / "events.db") as log:
        log.append([e.event() for e in events[:25]])  # logged before the replicas start
        loaded: list[PipelinePredictor] = []
        threads = [threading.Thread(target=lambda: loaded.append(PipelinePredictor.from_registry(
            registry, version, data_dir=sim_data_dir, event_log=log, feature_store=store_url))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        reference = PipelinePredictor.from_registry(registry, version, data_dir=sim_data_dir, event_log=log)
    assert len(loaded) == 2
    for predictor in (*loaded, reference):  # every replica's history tail hands each event to its predictors
        predictor.observe(events[25:])
    users, now = [str(u) for u in range(1, 8)], 2e9 + 100
    items = [str(i) for i in range(1, 31)]
    assert loaded[0].store.offset() == loaded[1].store.offset() == reference.store.offset() == 40
    for predictor in loaded:  # the same features as a replica's own embedded store: nothing counted twice
        assert_batches_equal(predictor.store.user_features(users, now), reference.store.user_features(users, now))
        assert_batches_equal(predictor.store.item_features(items, now), reference.store.item_features(items, now))


def test_items_added_on_one_replica_join_the_other(settings: ServeSettings, registry: ModelRegistry,
                                                   pipeline_bundle: Path, redis_url: str, redis_prefix: str) -> None:
    registry.publish_bundle(pipeline_bundle, kind="pipeline", name="two-tower+din")
    settings = replace(settings, event_log=f"{redis_url}?stream={redis_prefix}:events", poll_interval_s=0.1,
                       read_your_writes=True, feature_store=f"{redis_url}?prefix={redis_prefix}:features")
    fresh = {"items": [{"item_id": "release-1", "title": "A Fresh Release", "genres": ["Drama"]}]}
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        assert first.post("/items", json=fresh).status_code == 200
        other = second.app.state.serving
        _wait_for(lambda: "release-1" in other.arms["live"].predictor.catalog.items, "the item on the other replica",
                  seconds=20.0)
        assert "release-1" in other.table.catalog.items  # so the other replica accepts events naming it too
