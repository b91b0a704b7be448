"""``POST /items``: new items described by their content join the pipeline arms' catalogs at once."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError

from seekrec.serving.auth import Role, require
from seekrec.serving.exposure import public_detail
from seekrec.serving.predictor import ItemsNotAddableError
from seekrec.serving.routes import get_state
from seekrec.serving.schemas import (
    BODY_ERRORS,
    ErrorResponse,
    ItemsRequest,
    ItemsResponse,
)
from seekrec.serving.state import ServingState

router = APIRouter(tags=["items"], dependencies=[Depends(require(Role.ADMIN))])


@router.post("/items", response_model=ItemsResponse,
             responses={**BODY_ERRORS, 409: {"model": ErrorResponse}})
async def post_items(body: ItemsRequest, state: Annotated[ServingState, Depends(get_state)]) -> ItemsResponse:
    """Cold start: each item is embedded from its title and genres by the two-tower's item tower and is
    retrievable by the next ``/recommend``, before anyone has interacted with it."""
    ids = [item.item_id for item in body.items]
    if len(set(ids)) != len(ids):
        raise RequestValidationError([{"loc": ["body", "items"], "type": "value_error",
                                       "msg": "item_id values must be unique within one request"}])
    records = {item.item_id: item.model_dump(exclude={"item_id"}) for item in body.items}
    try:
        added = await state.add_items(records)
    except ItemsNotAddableError as exc:
        raise HTTPException(status_code=409, detail=public_detail(str(exc), "POST /items refused")) from exc
    return ItemsResponse(added=added)
