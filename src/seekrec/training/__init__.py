"""Training stage: one step function over an iterator, the epoch trainer around it, checkpoints and the
run directory (its one reader and writer)."""
