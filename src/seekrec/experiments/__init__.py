"""Online experiments: layered definitions, assignment, gradual rollouts and their outcomes (docs/experiments.md)."""
