"""The multi-stage pipeline: two-tower (or sequence-model) retrieval -> DIN ranking -> re-ranking.

``train_two_tower`` and ``train_din`` fit the two feature models on a dataset (``run.train_pipeline`` does it all),
``pipeline.Pipeline`` runs the stages (its ``recommend`` is the serving entry point), ``artifacts``
saves and loads a bundle directory and ``evaluate`` scores the whole pipeline under the full-ranking
protocol. See docs/pipeline.md.
"""
