"""A/B assignment: a user lands in the same arm on every request, in every process, without shared state.

The bucket is a hash of ``experiment name + ":" + user id``, so no assignment table is stored, every
server replica agrees, and starting a new experiment (a new name) reshuffles users independently of
the previous one.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from seekrec.experiments.assignment import bucket
from seekrec.experiments.definition import N_BUCKETS
from seekrec.serving.settings import ArmSettings, ExperimentSettings

__all__ = ["N_BUCKETS", "ArmAssigner", "bucket"]


class ArmAssigner:
    """Maps buckets to arms by cumulative weight: arm i owns buckets ``[edge[i-1], edge[i])``."""

    def __init__(self, experiment: ExperimentSettings) -> None:
        self.experiment = experiment
        total = sum(a.weight for a in experiment.arms)
        cumulative = list(accumulate(a.weight for a in experiment.arms))
        self._edges = [round(N_BUCKETS * c / total) for c in cumulative]
        self._edges[-1] = N_BUCKETS  # rounding must never leave the last buckets without an arm

    def assign(self, user_id: str) -> ArmSettings:
        """The arm of ``user_id`` in this experiment."""
        index = bisect_right(self._edges, bucket(self.experiment.name, user_id))
        return self.experiment.arms[index]
