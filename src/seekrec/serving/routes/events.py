"""``POST /events``: feedback into the durable event log and, at once, into the user histories."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from seekrec.online.event_log import Event
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import ErrorResponse, EventsRequest, EventsResponse
from seekrec.serving.state import ServingState

router = APIRouter(tags=["events"])


@router.post("/events", response_model=EventsResponse,
             responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
async def post_events(body: EventsRequest, state: Annotated[ServingState, Depends(get_state)]) -> EventsResponse:
    """Append the batch atomically; the response comes only after the log made it durable."""
    now = time.time()
    try:
        events = [Event(e.user_id, e.item_id, now if e.timestamp is None else e.timestamp, e.event_type, e.value)
                  for e in body.events]
    except ValueError as exc:  # e.g. text the log cannot store (lone surrogates)
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    try:
        offsets = await state.add_events(events, body.idempotency_key)
    except ValueError as exc:  # an idempotency key reused for a different batch
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return EventsResponse(accepted=len(offsets), offsets=(offsets[0], offsets[-1]))
