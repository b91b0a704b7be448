"""Online experiments: definitions, assignment, rollout, outcome logs and per-arm metrics."""
