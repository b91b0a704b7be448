"""Launch a test's multi-process jobs under torchrun (``--standalone``, gloo on CPU): one launch runs every job of
a spec, since starting the ranks costs more than the training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_jobs(script: Path, spec: list[dict[str, Any]], root: Path, *, nproc: int = 2, timeout_s: float = 600) -> None:
    """Write ``spec`` to ``root/spec.json`` and run ``script spec.json`` on ``nproc`` ranks. A failure shows rank 0's
    last lines; on a timeout the launcher and its workers (one process group) are killed, not left running."""
    (root / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                             str(nproc), str(script), str(root / "spec.json")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        raise AssertionError(f"torchrun {script.name} ran past {timeout_s} s; last lines:\n"
                             + "\n".join(stderr.splitlines()[-40:])) from None
    rank0 = [line for line in stderr.splitlines() if line.startswith("[rank0]")]
    assert proc.returncode == 0, "\n".join(rank0[-40:] or stderr.splitlines()[-40:])
