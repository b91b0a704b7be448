"""``GET /healthz`` (the process answers) and ``GET /readyz`` (models and histories are loaded).

Both answer without a key (load balancers and orchestrators probe them); ``/readyz`` names no paths."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from seekrec.serving.exposure import public_detail
from seekrec.serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Readiness}})
async def healthz(request: Request) -> Health | JSONResponse:
    """Liveness: answers whenever the event loop runs, even while models load in the background;
    503 only when a background start-up gave up (restart the process)."""
    state = getattr(request.app.state, "serving", None)
    if state is not None and state.failure is not None:
        return JSONResponse(Readiness(status="not_ready", detail=state.failure).model_dump(), status_code=503)
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once every arm has a model and histories are built, 503 (with the reason) before."""
    state = getattr(request.app.state, "serving", None)
    if state is None or not state.ready:
        detail = "server is starting" if state is None else public_detail(state.not_ready_reason(), "not ready")
        return JSONResponse(Readiness(status="not_ready", detail=detail).model_dump(), status_code=503)
    versions = {arm: model.predictor.version for arm, model in state.arms.items()}
    # ready, but say so when CURRENT could not be loaded and an older good version serves instead
    return JSONResponse(Readiness(status="ready", versions=versions, detail=state.table.degraded()).model_dump())
