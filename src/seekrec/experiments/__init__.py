"""Online experiments: layered definitions, assignment, gradual rollouts, outcome logs, per-arm metrics and
reports (docs/experiments.md)."""
