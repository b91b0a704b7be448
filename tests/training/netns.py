"""Two "hosts" on one machine for multi-node tests: network namespaces joined by a veth pair.

Each namespace has its own interfaces, addresses and ports, so a torchrun agent in each one talks to
the other over a real (virtual) link, while both see the same filesystem, like nodes on shared storage.
Needs root and iproute2; ``netns_problem`` says why not when either is missing.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_serial = itertools.count()


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its end of the veth pair and that end's IPv4 address."""

    netns: str
    ifname: str
    addr: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace (the process is ``argv`` itself: ``ip netns exec`` execs)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        """Every process in the namespace, the children a launcher started in new sessions included."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], check=False, capture_output=True, text=True,
                             timeout=10)
        return [int(p) for p in out.stdout.split()]

    def processes(self) -> dict[int, str]:
        """pid -> command line of every process in the namespace (processes that exit meanwhile are left out)."""
        found = {}
        for pid in self.pids():
            try:
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # exited meanwhile
                continue
        return found

    def kill_all(self) -> list[int]:
        """SIGKILL every process in the namespace, as when the host goes down; returns the pids signalled.

        Killing only the launcher's process group is not a host failure: torchrun starts each worker in
        a session of its own, so the worker would go on training without its agent.
        """
        killed = []
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                continue
        return killed


def netns_problem() -> str | None:
    """Why two namespace hosts cannot be built here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"seekrec-probe-{os.getpid()}-{next(_serial)}"
    made = subprocess.run(["ip", "netns", "add", probe], check=False, capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"`ip netns add` fails: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True, timeout=10)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


@contextmanager
def two_hosts(subnet: str = "10.231.0") -> Iterator[tuple[Host, Host]]:
    """Hosts ``subnet.1`` and ``subnet.2`` (/24) on one veth link, loopback up in each.

    Names carry this process's pid and a serial number, so concurrent test runs never share them. On
    exit every process left in either namespace is killed before the namespaces (and with them the
    veth pair) are deleted: a namespace with a live process in it would outlive ``ip netns del``.
    """
    tag = f"{os.getpid()}{next(_serial)}"
    hosts = tuple(Host(f"seekrec-{tag}-{side}", f"sr{tag}{side}", f"{subnet}.{n}")  # ifname: at most 15 chars
                  for n, side in ((1, "a"), (2, "b")))
    made: list[Host] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.netns)
            made.append(host)
        a, b = hosts
        _ip("link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname)
        for host in hosts:
            _ip("link", "set", host.ifname, "netns", host.netns)
            _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", host.ifname)
            _ip("-n", host.netns, "link", "set", "lo", "up")  # a host reaches its own address through lo
            _ip("-n", host.netns, "link", "set", host.ifname, "up")
        yield a, b
    finally:
        for host in made:
            host.kill_all()
        for host in made:
            subprocess.run(["ip", "netns", "del", host.netns], check=False, capture_output=True, timeout=10)
        # a veth pair that never reached its namespaces would be left in this one
        subprocess.run(["ip", "link", "del", hosts[0].ifname], check=False, capture_output=True, timeout=10)
