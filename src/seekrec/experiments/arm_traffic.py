"""``ArmTraffic``: the users of one experiment arm, for an online learner that trains on that arm alone.

A learner shared by every arm learns from the treatment's users too, so the control's model improves with
what the treatment showed them (an exploration arm's discoveries, say) and the A/B test measures less than
the treatment would bring on its own: the treatment leaks into the control. A learner per arm, each reading
the shared event log through its arm's ``ArmTraffic`` and publishing to its own registry channel, keeps each
arm's model trained on that arm's traffic only (docs/experiments.md, "Per-arm learners").

The filter assigns users exactly as the server does (``Assigner``, from the same definitions file); for a
rollout it re-reads the stage from the rollout state files every ``refresh_s``, so the treatment's learner
follows the users the rollout adds (stages only grow; a stop or rollback empties the treatment).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from seekrec.experiments.assignment import Assigner
from seekrec.experiments.definition import ExperimentsConfig
from seekrec.experiments.rollout_store import RolloutStore, current_stages


def parse_arm_spec(spec: str) -> tuple[str, str]:
    """``"EXPERIMENT=ARM"`` -> ``(experiment, arm)``."""
    experiment, sep, arm = spec.partition("=")
    if not sep or not experiment or not arm:
        raise ValueError(f"arm {spec!r} must look like EXPERIMENT=ARM, e.g. explore-test=control")
    return experiment, arm


class ArmTraffic:
    """``traffic(user_id)``: whether the server serves ``user_id`` arm ``arm`` of ``experiment``."""

    def __init__(self, config: ExperimentsConfig, experiment: str, arm: str, rollouts: RolloutStore | None = None,
                 refresh_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        found = {e.name: e for layer in config.layers for e in layer.experiments}
        if experiment not in found:
            raise ValueError(f"no experiment {experiment!r} in the definitions; experiments: {sorted(found)}")
        definition = found[experiment]
        names = [a.name for a in definition.arms]
        if arm not in names:
            raise ValueError(f"experiment {experiment!r} has no arm {arm!r}; arms: {names}")
        if definition.interleave:
            raise ValueError(f"experiment {experiment!r} interleaves: every user sees both arms, so no arm has "
                             "traffic of its own; per-arm learners need an A/B or rollout experiment")
        if definition.rollout is not None and rollouts is None:
            raise ValueError(f"experiment {experiment!r} is a rollout: its stage lives in the rollout state files, "
                             "so give their directory (the server's --rollout-dir)")
        self.config, self.experiment, self.arm = config, experiment, arm
        self.name = f"{experiment}={arm}"
        self.rollouts = rollouts if definition.rollout is not None else None
        self.refresh_s, self.clock = refresh_s, clock
        self._assigner = Assigner(config)
        self._read_at: float | None = None

    def __call__(self, user_id: str) -> bool:
        return self.assigner().assign(user_id).arms.get(self.experiment) == self.arm

    def assigner(self) -> Assigner:
        """The assigner at the rollout's current stage (re-read at most every ``refresh_s``)."""
        if self.rollouts is not None and (self._read_at is None or self.clock() - self._read_at >= self.refresh_s):
            self._read_at = self.clock()
            stages = current_stages(self.rollouts, self.config)
            if stages != self._assigner.stages:
                self._assigner = self._assigner.with_stages(stages)
        return self._assigner
