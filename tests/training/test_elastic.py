"""Elastic multi-node training: a torchrun agent on each of two namespace "hosts" joined by a veth pair,
c10d rendezvous with ``--nnodes 1:2``; host B dies mid-run and host A finishes the job alone from the
last checkpoint in the shared run directory, with the losses of an uninterrupted run.

What is and is not exercised here: docs/elastic.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from seekrec.training.checkpoint import STATE_FILE, CheckpointError, latest_checkpoint
from seekrec.training.run_dir import RunDir
from tests.training.netns import Host, netns_problem, two_hosts

# tests/training/test_distributed.py's tiny model, trained long enough (12 epochs x 8 steps) that host B
# can be killed between two checkpoints; no early stop, so both runs take the whole schedule.
EPOCHS = 12
ARGS = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "model.dropout=0.0", "data.max_len=12",
        "train.batch_size=16", f"train.max_epochs={EPOCHS}", "train.lr=0.01", "train.warmup_steps=2",
        "loss.name=full_softmax", "train.checkpoint_every=4", "train.patience=1000"]
RDZV_PORT = 29400
# Fast failure detection: a node missing 2 heartbeats 1 s apart is dropped from the rendezvous, and a
# round with fewer than --nnodes MAX nodes closes 3 s after it reached MIN (torch's defaults: 5 s x 3, 30 s).
RDZV_CONF = "join_timeout=60,last_call_timeout=3,keep_alive_interval=1,keep_alive_max_attempt=2"
TEST_SECONDS = 110  # the whole test, reference run included
T = TypeVar("T")


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    problem = netns_problem()
    if problem is not None:
        if os.environ.get("SEEKREC_REQUIRE_SERVICES") == "1":
            pytest.fail(f"SEEKREC_REQUIRE_SERVICES=1 but two network-namespace hosts cannot be built: {problem}; "
                        "run the tests as root with iproute2 installed", pytrace=False)
        pytest.skip(f"two network-namespace hosts cannot be built: {problem}")
    with two_hosts() as pair:
        yield pair


def start_agent(host: Host, store: Host, run_id: str, data: Path, out: Path, log: Path) -> subprocess.Popen:
    """torchrun on ``host``: one worker, c10d rendezvous on ``store`` (whose agent hosts the TCP store)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1:2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{store.addr}:{RDZV_PORT}", "--rdzv-id", run_id,
            "--rdzv-conf", f"is_host={int(host == store)},{RDZV_CONF}", "--local-addr", host.addr,
            "--max-restarts", "3", "--monitor-interval", "0.5",
            "-m", "seekrec.cli", "train", "--data", str(data), "--out", str(out), *ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "INFO",
           "GLOO_SOCKET_IFNAME": host.ifname,  # gloo would otherwise pick the address the hostname resolves to
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # docs/elastic.md: a returning host needs it
    with open(log, "wb") as fh:
        return subprocess.Popen(host.command(argv), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def wait_for(condition: Callable[[], T | None], what: str, deadline: float,
             agents: dict[str, tuple[subprocess.Popen, Path]]) -> T:
    """Poll ``condition`` until it returns a value; fail naming ``what`` if an agent exits or time runs out."""
    while True:
        value = condition()
        if value is not None:
            return value
        for name, (proc, log) in agents.items():
            if proc.poll() is not None:
                pytest.fail(f"agent {name} exited ({proc.returncode}) before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- agent {name}\n{tail(log)}" for name, (_, log) in agents.items())
            pytest.fail(f"timed out waiting for {what}:\n{logs}")
        time.sleep(0.05)


def latest_step(run: RunDir) -> int | None:
    """The optimiser step of the newest complete checkpoint, or None while there is none."""
    try:
        path = latest_checkpoint(run.checkpoints)
        return None if path is None else int(json.loads((path / STATE_FILE).read_text())["global_step"])
    except (OSError, CheckpointError, json.JSONDecodeError):  # pruned or being replaced under us: ask again
        return None


def train_records(run: RunDir) -> list[dict]:
    return [r for r in run.metrics_log.read() if r["kind"] == "train"]


@pytest.mark.slow
def test_host_dies_and_the_survivor_finishes_from_the_last_checkpoint(hosts, sim_data_dir, tmp_path):
    deadline = time.monotonic() + TEST_SECONDS
    a, b = hosts
    ref = subprocess.run([sys.executable, "-m", "seekrec.cli", "train", "--data", str(sim_data_dir),
                          "--out", str(tmp_path / "reference"), *ARGS],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False, capture_output=True, text=True,
                         timeout=60)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = RunDir(tmp_path / "reference")
    total_steps = reference.read_results()["steps"]
    assert reference.read_results()["epochs"] == EPOCHS  # the whole schedule, no early stop

    run = RunDir(tmp_path / "elastic")  # one directory both hosts see, as on NFS
    run_id = f"seekrec-elastic-{os.getpid()}"
    logs = {"A": tmp_path / "agent-a.log", "B": tmp_path / "agent-b.log"}
    # B first: it waits for A's TCP store, so both join the first round within its 3 s last call
    agent_b = start_agent(b, a, run_id, sim_data_dir, run.path, logs["B"])
    agent_a = start_agent(a, a, run_id, sim_data_dir, run.path, logs["A"])
    agents = {"A": (agent_a, logs["A"]), "B": (agent_b, logs["B"])}

    def b_worker() -> list[int] | None:
        return [pid for pid, cmd in b.processes().items()
                if "seekrec.cli" in cmd and "torch.distributed.run" not in cmd] or None

    wait_for(b_worker, "host B's worker to start", deadline, agents)
    # B's worker exists only once a two-node round is complete, so a checkpoint newer than this one was
    # written by the two-rank job
    before = latest_step(run) or 0

    def newer_checkpoint() -> int | None:
        step = latest_step(run)
        return step if step is not None and step > before else None

    killed_at = wait_for(newer_checkpoint, "a checkpoint of the two-rank job", deadline, agents)
    assert not run.finished, "the run ended before host B was killed; give it more epochs"
    assert b.kill_all(), "host B had no processes to kill"
    assert agent_b.wait(timeout=10) == -9

    try:
        assert agent_a.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, tail(logs["A"])
    except subprocess.TimeoutExpired:
        pytest.fail(f"host A did not finish the job within {TEST_SECONDS} s:\n{tail(logs['A'])}")

    log_a = logs["A"].read_text(errors="replace")
    # torchrun's record of each rendezvous: two nodes, then A alone after one restart
    assert re.findall(r"group_world_size=(\d+)", log_a)[-2:] == ["2", "1"], log_a[-4000:]
    assert re.findall(r"restart_count=(\d+)", log_a)[-1] == "1"
    resumed = [int(s) for s in re.findall(r"resumed from \S*step-(\d+) ", log_a)]
    assert len(resumed) == 1 and killed_at <= resumed[0] < total_steps, (killed_at, resumed)

    results = run.read_results()
    assert results["steps"] == total_steps and results["epochs"] == EPOCHS
    assert results["world_size"] == 1  # the world it finished in
    elastic, uninterrupted = train_records(run), train_records(reference)
    assert [r["step"] for r in elastic] == list(range(1, total_steps + 1))  # each step once, none lost or repeated
    # the resize in metrics.jsonl: the steps after the checkpoint the two-rank job started from (`before`, or
    # earlier) up to the one A resumed from ran on 2 ranks, the rest on A alone
    worlds = [r["world_size"] for r in elastic]
    assert set(worlds[before:resumed[0]]) == {2} and set(worlds[resumed[0]:]) == {1}, worlds
    for x, y in zip(elastic, uninterrupted):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), x["step"]  # the same global batches and schedule
    assert [r["epoch"] for r in run.metrics_log.read() if r["kind"] == "valid"] == list(range(1, EPOCHS + 1))
    for key in ("ndcg@10", "hr@50", "mrr"):
        assert results["metrics"][key] == pytest.approx(reference.read_results()["metrics"][key], abs=2e-3)
