"""seekrec: a real-time deep-learning recommender system in one package."""

__version__ = "0.1.0"
