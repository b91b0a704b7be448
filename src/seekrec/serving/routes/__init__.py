"""One router per resource: recommend, events, health, version (admin) and metrics."""

from __future__ import annotations

from fastapi import HTTPException, Request

from seekrec.serving.state import ServingState


async def get_state(request: Request) -> ServingState:
    """The app's ``ServingState``; 503 when the lifespan has not built it (app used without its lifespan).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
    per request that costs more than the whole lookup."""
    state = getattr(request.app.state, "serving", None)
    if state is None:
        raise HTTPException(status_code=503, detail="server is starting: no serving state yet")
    return state
