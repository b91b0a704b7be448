"""Request and response bodies of the HTTP API, with their limits.

Requests are strict (no ``"5"`` -> 5 or ``true`` -> 1 coercion, unknown fields rejected, finite
numbers only), so a client bug is a 422 naming the field rather than a silently odd answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000
MAX_EVENTS_PER_BATCH = 1000

Id = Annotated[str, Field(min_length=1, max_length=256, description="raw id as the client knows it")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
ContextValue = str | int | float | bool | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Request):
    """``POST /recommend``."""

    user_id: Id
    k: int | None = Field(None, ge=1, le=MAX_K, description="how many items; default: the server's default_k")
    exclude_seen: bool = Field(True, description="drop items already in the user's history")
    context: dict[str, ContextValue] | None = Field(
        None, max_length=64, description="request context (page, device ...); accepted for clients and logs, "
                                         "not used by the sequence models")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    """Ranked items; ``fallback`` is true when they are the most popular items, not personalised."""

    user_id: str
    items: list[ScoredItem]
    model_version: str
    arm: str
    fallback: bool


class EventIn(_Request):
    """One interaction; ``timestamp`` (unix seconds) defaults to the time the server receives it."""

    user_id: Id
    item_id: Id
    timestamp: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    event_type: Annotated[str, Field(min_length=1, max_length=64)] = "click"
    value: Finite = 1.0


class EventsRequest(_Request):
    """``POST /events``: 1..1000 events, appended atomically (all or none)."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a client-chosen id of this batch (a UUID): a retry with the same key within an hour "
                          "is answered with the first offsets and written once")


class EventsResponse(BaseModel):
    """Sent only after the batch is durable in the event log; ``offsets`` = [first, last]."""

    accepted: int
    offsets: tuple[int, int]


class NewItem(_Request):
    """An item with no interactions yet, described by content the feature spec reads."""

    item_id: Id
    title: Annotated[str, Field(min_length=1, max_length=1000)]
    genres: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=32)
    year: int | None = Field(None, ge=0, le=9999)


class ItemsRequest(_Request):
    """``POST /items``: 1..1000 new items for the pipeline arms' catalogs (cold start)."""

    items: list[NewItem] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)


class ItemsResponse(BaseModel):
    """Per served pipeline version, the raw ids it added (items it already knew are skipped)."""

    added: dict[str, list[str]]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    detail: str | None = None
    versions: dict[str, str] = Field(default_factory=dict, description="arm -> served version")


class ArmInfo(BaseModel):
    name: str
    configured: str = Field(description="'current' or a pinned version")
    weight: float
    version: str | None = Field(None, description="the version served now; null before one is loaded")
    model_name: str | None = None
    created: str | None = None
    published_at: str | None = None
    n_items: int | None = None
    index: str | None = None


class VersionResponse(BaseModel):
    seekrec: str
    experiment: str
    current: str | None = Field(description="the CURRENT version this server serves to 'current' arms")
    ready: bool
    arms: list[ArmInfo]


class ErrorResponse(BaseModel):
    detail: str
