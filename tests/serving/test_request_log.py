"""The request log: a JSON line per /recommend written by a background thread; a full queue drops and counts,
never waits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from seekrec.serving.app import create_app
from seekrec.serving.request_log import RequestLog, RequestRecord
from seekrec.serving.settings import ServeSettings


def _record(n: int) -> RequestRecord:
    return RequestRecord(time.time(), f"r{n}", "u1", 10, True, None, "live", {"default": "live"}, "v1", ("a",), (1.0,),
                         False, 1.5, "miss")


def test_every_request_is_a_line(settings: ServeSettings, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "requests.jsonl"
    with TestClient(create_app(replace(settings, request_log=path))) as client:
        bodies = [client.post("/recommend", json={"user_id": "3", "k": 4}).json() for _ in range(2)]
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # the lifespan's end wrote the queue
    assert [line["request_id"] for line in lines] == [b["request_id"] for b in bodies]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    assert lines[0]["items"] == [i["item_id"] for i in bodies[0]["items"]] and lines[0]["k"] == 4
    assert lines[0]["model_version"] == "v000001" and lines[0]["arm"] == "live" and lines[0]["latency_ms"] > 0


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    log = RequestLog(tmp_path / "requests.jsonl", max_queue=2, registry=registry)
    entered, release = threading.Event(), threading.Event()
    append = log.file.append

    def stuck(records: Sequence[Any]) -> int:  # a disk that stalls
        entered.set()
        release.wait(10)
        return append(records)

    log.file.append = stuck  # type: ignore[method-assign]
    assert log.submit(_record(0))
    assert entered.wait(5)  # the writer thread is inside the stalled write; the queue fills behind it
    slowest, accepted = 0.0, []
    for n in range(1, 8):
        start = time.perf_counter()
        accepted.append(log.submit(_record(n)))
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 0.05 and accepted == [True, True] + [False] * 5
    assert registry.get_sample_value("seekrec_request_log_records_lost_total", {"reason": "queue_full"}) == 5
    release.set()
    assert log.close(timeout=5)
    written = [json.loads(line)["request_id"] for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert written == ["r0", "r1", "r2"]
