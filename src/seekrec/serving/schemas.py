"""Request and response bodies of the HTTP API, with their limits.

Requests are strict (no ``"5"`` -> 5 or ``true`` -> 1 coercion, unknown fields rejected, finite
numbers only), so a client bug is a 422 naming the field rather than a silently odd answer. Every
string and list has a maximum length, so no field can make a request cost more than its body limit
says. The one coercion is a whole number written as a float (``633.0`` for an integer): JSON Schema
counts it as an integer, so a client generated from the OpenAPI schema may send it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_K = 1000
MAX_EVENTS_PER_BATCH = 1000
MAX_CONTEXT_KEYS = 64
MAX_CONTEXT_KEY_CHARS = 64
MAX_CONTEXT_VALUE_CHARS = 1024


def _whole_float_to_int(value: Any) -> Any:
    """``633.0`` -> ``633`` (an integer in JSON Schema); anything else goes to strict int validation."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Id = Annotated[str, Field(min_length=1, max_length=256, description="raw id as the client knows it")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
ContextKey = Annotated[str, Field(min_length=1, max_length=MAX_CONTEXT_KEY_CHARS)]
ContextValue = Annotated[str, Field(max_length=MAX_CONTEXT_VALUE_CHARS)] | int | Finite | bool | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # a before-validator here, not in the field's type: there it would hide ge/le from the JSON schema
    _whole_ints = field_validator("k", "year", "min_offset", mode="before", check_fields=False)(_whole_float_to_int)


class RecommendRequest(_Request):
    """``POST /recommend``."""

    user_id: Id
    k: int | None = Field(None, ge=1, le=MAX_K, description="how many items; default: the server's default_k")
    exclude_seen: bool = Field(True, description="drop items already in the user's history")
    min_offset: int | None = Field(
        None, ge=1, le=2**63 - 1, description="read-your-writes across replicas: the last offset a POST /events "
                                  "answered (to any replica); this answer then reflects every event up to it")
    context: dict[ContextKey, ContextValue] | None = Field(
        None, max_length=MAX_CONTEXT_KEYS, description="request context (page, device ...); accepted for clients and logs, "
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
    request_id: str = Field(description="this answer's id: send it with the events it leads to (POST /events "
                                        "request_id), so experiments credit them to this list and its arms")
    arms: dict[str, str] = Field(default_factory=dict, description="experiment -> the user's arm in it")


class EventIn(_Request):
    """One interaction; ``timestamp`` (unix seconds) defaults to the time the server receives it."""

    user_id: Id
    item_id: Id
    timestamp: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    event_type: Annotated[str, Field(min_length=1, max_length=64)] = "click"
    value: Finite = 1.0
    request_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x20-\x7e]+$")] | None = Field(
        None, description="the request_id of the POST /recommend answer the event responds to: experiments credit "
                          "it to that served list and its arms")


class EventsRequest(_Request):
    """``POST /events``: 1..1000 events, appended atomically (all or none)."""

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_PER_BATCH)
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="a client-chosen id of this batch (a UUID): a retry with the same key within an hour "
                          "is answered with the first offsets and written once")


class EventsResponse(BaseModel):
    """Sent only after the batch is durable in the event log; ``offsets`` = [first, last]."""

    accepted: int
    # a list, not tuple[int, int]: FastAPI writes a tuple as an OpenAPI 3.0 "items" array, invalid in 3.1
    offsets: list[int] = Field(min_length=2, max_length=2, description="[first, last]")


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
    index: str | None = Field(None, description="the ANN index: flat or hnsw, with -sq8 for int8 codes (--index-codec)")
    encoder: str | None = Field(None, description="the user encoder's precision: fp32 or int8 (--quantize); null "
                                                  "for pipeline arms, which run fp32")


class VersionResponse(BaseModel):
    seekrec: str
    experiment: str
    current: str | None = Field(description="the CURRENT version this server serves to 'current' arms")
    ready: bool
    arms: list[ArmInfo]


class ExperimentsResponse(BaseModel):
    layers: list[dict[str, Any]] = Field(description="each layer's experiments and their arms")
    rollouts: dict[str, dict[str, Any] | None] = Field(description="experiment -> its rollout state file (null: "
                                                                  "not started)")
    stages: dict[str, int] = Field(default_factory=dict, description="the stages this replica assigns with")


class ExperimentAction(_Request):
    reason: Annotated[str, Field(max_length=500)] = ""


class ErrorResponse(BaseModel):
    detail: str


class FieldError(BaseModel):
    """One invalid field: where (``["body", "k"]``), what is wrong, and pydantic's error type."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """422: every invalid field of the request (the input itself is not echoed)."""

    detail: list[FieldError]


# the statuses any route with a request body can answer besides its own, as documented in the OpenAPI schema
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not JSON text (e.g. not UTF-8)"},
    413: {"model": ErrorResponse, "description": "the body is over max_body_bytes"},
    422: {"model": ValidationErrorResponse, "description": "a field is invalid; each one is named"},
    429: {"model": ErrorResponse, "description": "the client's rate limit is spent (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "not ready, or overloaded (see Retry-After)"},
}
