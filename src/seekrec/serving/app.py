"""``create_app(settings)`` builds the FastAPI app; ``serve(settings)`` runs it with uvicorn in one process.

Nothing loads at import or in ``create_app``: models, indexes, histories and the event log are opened
in the lifespan, so importing the app (tests, tooling, ``--factory`` style launchers) is cheap and a
start-up failure surfaces as uvicorn's failed start-up with the error message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from seekrec.online.event_log import EventLogUnavailableError
from seekrec.serving.auth import KeyStore, check_bind
from seekrec.serving.batching import QueueFullError
from seekrec.serving.exposure import public_detail
from seekrec.serving.limits import BodySizeLimit, RateLimit, TokenBuckets, client_key
from seekrec.serving.metrics import MetricsMiddleware, ServingMetrics
from seekrec.serving.routes import admin, events, experiments, health, items, metrics, recommend
from seekrec.serving.settings import ServeSettings
from seekrec.serving.state import NotReadyError, ServingState
from seekrec.serving.ui.routes import install as install_console

log = logging.getLogger(__name__)


def create_app(settings: ServeSettings) -> FastAPI:
    """The app for ``settings``; its lifespan loads everything and stops the background tasks."""
    serving_metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServingState(settings, serving_metrics)
        await state.start()
        app.state.serving = state
        try:
            yield
        finally:
            app.state.serving = None
            await state.stop()

    app = FastAPI(title="seekrec", summary="real-time sequential recommendations", lifespan=lifespan,
                  **_docs_urls(settings))
    _install_perimeter(app, settings)
    app.state.metrics = serving_metrics
    app.state.serving = None
    # limits (serving/limits.py): the body size inside the rate limit, metrics outermost so refusals count
    rejected = serving_metrics.rejected
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       on_reject=lambda reason: rejected.labels(reason=reason).inc())
    if settings.rate_limit_per_s > 0:
        app.add_middleware(RateLimit, buckets=TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst),
                           key=functools.partial(client_key, keys=app.state.keys),
                           on_reject=lambda reason: rejected.labels(reason=reason).inc())
    app.add_middleware(MetricsMiddleware, metrics=serving_metrics)
    for module in (recommend, events, items, health, admin, experiments, metrics):
        app.include_router(module.router)
    install_console(app)  # the web console at /ui (docs/console.md)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input, which cannot be rendered when it holds NaN; name the field instead
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        detail = public_detail(str(exc), "not ready")  # a failed version's reason may name its files
        return JSONResponse({"detail": f"not ready: {detail}"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(QueueFullError)
    async def overloaded(request: Request, exc: QueueFullError) -> JSONResponse:
        rejected.labels(reason="overloaded").inc()
        return JSONResponse({"detail": f"overloaded: {exc}"}, status_code=503, headers={"Retry-After": "1"})

    # -- event-log faults: 503 + Retry-After through Starlette's ExceptionMiddleware, which answers and
    # keeps the connection; the catch-all below runs in ServerErrorMiddleware, which re-raises after
    # its 500, and uvicorn then drops the keep-alive connection (resets for the client's other requests).
    # The outage itself is logged once by ``ServingState.outage``, not per request.
    @app.exception_handler(EventLogUnavailableError)
    async def event_log_unavailable(request: Request, exc: EventLogUnavailableError) -> JSONResponse:
        return JSONResponse({"detail": f"event log unavailable, retry later: {exc}"}, status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        serving_metrics.errors.labels(kind="unhandled").inc()
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    return app


# -- access control and exposure (seekrec.serving.auth) --------------------------------------------
def _docs_urls(settings: ServeSettings) -> dict[str, str | None]:
    """Swagger UI and ReDoc load their scripts from a CDN, which an offline or locked-down host cannot
    reach and which a production API need not offer: off unless ``--docs``."""
    return {"docs_url": "/docs", "redoc_url": "/redoc"} if settings.docs else {"docs_url": None, "redoc_url": None}


def _install_perimeter(app: FastAPI, settings: ServeSettings) -> None:
    """The API keys every route's ``require(role)`` dependency checks (read now: a bad keys file fails
    the start, not the first request)."""
    app.state.keys = KeyStore.from_settings(settings)


def serve(settings: ServeSettings, log_level: str = "info", access_log: bool = False) -> None:
    """Run the app with uvicorn (one process, one event loop) until interrupted. The per-request access
    log is off by default: ``/metrics`` counts requests, and a log line per request costs latency."""
    import uvicorn

    app = create_app(settings)
    check_bind(settings.host, app.state.keys)  # no keys: loopback only
    uvicorn.run(app, host=settings.host, port=settings.port, workers=1, log_level=log_level,
                access_log=access_log, lifespan="on", timeout_graceful_shutdown=10)
