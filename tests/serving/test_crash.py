"""A server SIGKILLed mid-traffic loses no acknowledged event: every offset a client received in a 200
response holds exactly that event when the SQLite log is reopened."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from seekrec.online.factory import open_event_log
from seekrec.registry import ModelRegistry

SERVER = Path(__file__).with_name("server_process.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    pytest.fail("server did not become ready in time")


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_event(tmp_path: Path, registry: ModelRegistry, sim_data_dir: Path) -> None:
    log_path, port = tmp_path / "events.db", _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(registry.root), str(log_path), str(sim_data_dir), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    acknowledged: dict[int, tuple[str, str, float]] = {}
    lock = threading.Lock()
    try:
        _wait_ready(base, proc)

        def client(worker: int) -> None:
            with httpx.Client(base_url=base, timeout=5) as http:
                for k in range(100_000):
                    batch = [{"user_id": f"w{worker}-u{k}", "item_id": str(1 + (k + j) % 80), "timestamp": k + j / 10}
                             for j in range(1 + k % 5)]
                    try:
                        response = http.post("/events", json={"events": batch})
                    except httpx.TransportError:
                        return  # the server died: this batch was never acknowledged
                    assert response.status_code == 200, response.text
                    first, last = response.json()["offsets"]
                    assert last - first + 1 == len(batch)
                    with lock:
                        for offset, event in zip(range(first, last + 1), batch):
                            acknowledged[offset] = (event["user_id"], event["item_id"], event["timestamp"])

        workers = [threading.Thread(target=client, args=(w,)) for w in range(3)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-traffic: requests are in flight
        for w in workers:
            w.join(timeout=30)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(acknowledged) >= 300
    with open_event_log(log_path) as log:
        stored = {e.offset: (e.user_id, e.item_id, e.timestamp) for e in log.read(0, limit=1_000_000)}
    missing = {o: e for o, e in acknowledged.items() if stored.get(o) != e}
    assert not missing, f"{len(missing)} acknowledged events lost or changed, e.g. {list(missing.items())[:3]}"
