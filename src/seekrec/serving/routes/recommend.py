"""``POST /recommend``: ranked items for one user."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from seekrec.experiments.outcomes import ServedList, new_request_id
from seekrec.serving.auth import Role, require
from seekrec.serving.request_log import RequestRecord
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import (
    BODY_ERRORS,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
)
from seekrec.serving.state import NotReadyError, ServingState

router = APIRouter(tags=["recommend"], dependencies=[Depends(require(Role.READ))])


@router.post("/recommend", response_model=RecommendResponse, responses=BODY_ERRORS)
async def recommend(body: RecommendRequest, state: Annotated[ServingState, Depends(get_state)]) -> RecommendResponse:
    """Personalised items (or popular ones, ``fallback: true``, for users with no usable history)."""
    start = time.perf_counter()
    k = body.k if body.k is not None else state.settings.default_k
    try:
        served = await state.recommend(body.user_id, k, body.exclude_seen, body.min_offset)
    except NotReadyError:
        raise
    except Exception:
        state.record_failure(body.user_id)  # the error-rate guardrail of the user's arms
        raise
    rec = served.rec
    request_id, now, latency_ms = new_request_id(), time.time(), (time.perf_counter() - start) * 1000
    state.track(request_id, served)
    state.log_served(ServedList(request_id, body.user_id, now, served.arms, rec.model_version,
                                list(rec.item_ids), latency_ms, rec.fallback, served.teams))
    if state.request_log is not None:  # queued for the writer thread; a full queue drops it and counts it
        state.request_log.submit(RequestRecord(now, request_id, body.user_id, k, body.exclude_seen, body.min_offset,
                                               served.arm, served.arms, rec.model_version, rec.item_ids, rec.scores,
                                               rec.fallback, latency_ms, served.cache))
    items = [ScoredItem(item_id=i, score=s) for i, s in zip(rec.item_ids, rec.scores)]
    return RecommendResponse(user_id=body.user_id, items=items, model_version=rec.model_version, arm=served.arm,
                             fallback=rec.fallback, request_id=request_id, arms=served.arms)
