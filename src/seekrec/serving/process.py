"""A server in a child process: pick a free loopback port, start it with its output in a log file and
stopped with the caller's ExitStack, wait until ``/readyz`` answers.

Used by the demo, the load benchmark and the dashboard previews, which run ``seekrec serve`` (and
``seekrec stream-train``) as their own processes (as in production, so the server does not share a GIL
with the clients that drive it).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_logged(cmd: list[str], logfile: Path, stack: ExitStack, env: Mapping[str, str] | None = None,
                 ) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr in ``logfile``; when ``stack`` closes, it is terminated (killed
    after 15 s)."""
    fh = stack.enter_context(open(logfile, "wb"))
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=None if env is None else dict(env))

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    return proc


def wait_ready(url: str, proc: subprocess.Popen, logfile: Path, timeout: float = 120.0) -> None:
    """Block until ``url/readyz`` answers 200; RuntimeError naming ``logfile`` if ``proc`` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}; see {logfile}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.3)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s; see {logfile}")
