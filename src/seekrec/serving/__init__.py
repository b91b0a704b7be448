"""Serving stage: ``create_app(settings)`` in ``app.py`` builds the FastAPI app, ``serve(settings)`` runs it.

This package import is cheap on purpose: ``predictor`` and ``batching`` work without FastAPI, and the
app, routes and schemas import it only when they are used.
"""
