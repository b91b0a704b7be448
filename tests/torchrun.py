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


RANKING_KEYS = ("ndcg@10", "hr@10", "hr@50", "mrr")


def records(run: Path, kind: str) -> list[dict[str, Any]]:
    """The ``kind`` records (train / valid / test) of a run directory's metrics log."""
    from seekrec.training.metrics_log import MetricsLog

    return [r for r in MetricsLog(run / "metrics.jsonl").read() if r["kind"] == kind]


def assert_same_training(run: Path, reference: Path, *, steps: int, keys: tuple[str, ...] = RANKING_KEYS,
                         atol: float = 1e-6) -> None:
    """``steps`` per-step losses equal to rtol 1e-5, and every validation / test metric of ``keys`` (those the
    reference logged) equal to ``atol``: a run of several processes trained as the reference did."""
    import numpy as np
    import pytest

    losses, expected = ([r["loss"] for r in records(path, "train")] for path in (run, reference))
    assert len(losses) == len(expected) == steps
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for kind in ("valid", "test"):
        got, want = records(run, kind), records(reference, kind)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            for key in keys:
                if key in b:
                    assert a[key] == pytest.approx(b[key], abs=atol), (kind, key)
