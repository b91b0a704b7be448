"""``POST /events``: feedback into the durable event log and, at once, into the user histories."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError

from seekrec.online.event_log import Event
from seekrec.serving.auth import Role, require
from seekrec.serving.exposure import public_detail
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import (
    BODY_ERRORS,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
)
from seekrec.serving.state import NotReadyError, ServingState

router = APIRouter(tags=["events"], dependencies=[Depends(require(Role.INGEST))])


@router.post("/events", response_model=EventsResponse,
             responses={**BODY_ERRORS, 409: {"model": ErrorResponse}})
async def post_events(body: EventsRequest, state: Annotated[ServingState, Depends(get_state)]) -> EventsResponse:
    """Append the batch atomically; the response comes only after the log made it durable."""
    if state.settings.unknown_items == "reject":
        _check_known_items(body, state)
    now = time.time()
    try:
        events = [Event(e.user_id, e.item_id, now if e.timestamp is None else e.timestamp, e.event_type, e.value,
                        e.request_id) for e in body.events]
    except ValueError as exc:  # e.g. text the log cannot store (lone surrogates)
        raise RequestValidationError([{"loc": ["body", "events"], "type": "value_error",
                                       "msg": public_detail(str(exc), "POST /events refused")}]) from exc
    try:
        offsets = await state.add_events(events, body.idempotency_key)
    except ValueError as exc:  # an idempotency key reused for a different batch: the request is valid, the key taken
        raise HTTPException(status_code=409, detail=public_detail(str(exc), "POST /events refused")) from exc
    return EventsResponse(accepted=len(offsets), offsets=[offsets[0], offsets[-1]])


def _check_known_items(body: EventsRequest, state: ServingState) -> None:
    """``unknown_items = "reject"``: every item must be in the server catalog (the served versions' items
    and those added by ``POST /items``), so no client can grow the item table; 422 names each one."""
    known = state.table.catalog.items
    if not len(known):
        raise NotReadyError("no model is loaded yet, so no item is known (unknown_items = 'reject')")
    unknown = [i for i, e in enumerate(body.events) if e.item_id not in known]
    if unknown:
        state.metrics.rejected.labels(reason="unknown_item").inc()
        raise RequestValidationError([
            {"loc": ["body", "events", i, "item_id"], "type": "unknown_item",
             "msg": f"item {body.events[i].item_id!r} is in no served catalog; with unknown_items = 'reject' "
                    "only known items (or items added by POST /items) are accepted"}
            for i in unknown])
