"""``GET /metrics``: Prometheus text exposition of this app instance's registry (a ``metrics`` key with
``metrics_require_key``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from seekrec.serving.auth import Role, require

router = APIRouter(tags=["metrics"], dependencies=[Depends(require(Role.METRICS))])


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Counters and histograms, with lag and freshness gauges refreshed for this scrape."""
    state = getattr(request.app.state, "serving", None)
    registry = request.app.state.metrics
    if state is not None:
        await state.update_gauges()
        if state.histories is not None:
            registry.users.set(len(state.histories))
            registry.users_evicted.set(state.histories.evicted)
    return Response(registry.render(), media_type=registry.content_type)
