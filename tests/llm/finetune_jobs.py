"""LLM ranker fine-tuning jobs of the multi-process tests, run under torchrun (several gloo ranks).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/llm/finetune_jobs.py SPEC.json`` runs the
``seekrec llm finetune`` jobs that SPEC lists, in order, in one process group (the command leaves the group when
it ends; a default group cannot be joined again reliably, so here the group is left once, after the last job).
A job with ``"interrupt_at_epoch": E`` is stopped on every rank when epoch E would validate (after
the checkpoints of epoch E - 1), as if the job had been killed there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import seekrec.llm.finetune as finetune_module
from seekrec.llm.finetune import FinetuneConfig, finetune
from seekrec.training.distributed import init_distributed, shutdown
from seekrec.training.trainer import Trainer


class Interrupted(Exception):
    """Raised on every rank at the same validation: the run stops after its last checkpoint."""


def run_job(job: dict[str, Any]) -> None:
    """One fine-tuning job of the spec (also called in the test process, one rank)."""
    config = FinetuneConfig.load(None, job["overrides"])
    stop = job.get("interrupt_at_epoch")
    validation = Trainer._validation

    def interrupt(self: Trainer, epoch: int, *rest: Any) -> Any:
        if epoch == stop:
            raise Interrupted
        return validation(self, epoch, *rest)

    Trainer._validation = interrupt  # this process runs nothing else: restored below all the same
    try:
        finetune(config, job["data"], job["out"])
    except Interrupted:
        pass
    finally:
        Trainer._validation = validation


def main(spec_file: str) -> None:
    ctx = init_distributed("cpu")
    finetune_module.shutdown = lambda ctx: None  # every job stays in the group
    for job in json.loads(Path(spec_file).read_text()):
        run_job(job)
    shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
