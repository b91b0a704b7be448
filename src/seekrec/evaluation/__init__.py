"""Evaluation stage: pure metrics, the full-ranking protocol, baselines and reports."""
