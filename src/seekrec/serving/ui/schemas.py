"""Response bodies of ``/ui/api``: what the console pages read (published in ``/openapi.json`` like the API's)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Session(BaseModel):
    """What the pages need to know before asking anything else; answered without a key."""

    keys_required: bool = Field(description="the API needs keys: the console sends the one typed into it")
    admin_enabled: bool = Field(description="admin actions are possible: an admin key is configured")
    admin_note: str = Field(description="why admin buttons are disabled, or how to use them")
    freshness_slo_s: float = Field(description="the freshness objective the Try-it round trip is held to")


class UserRow(BaseModel):
    user_id: str
    history_len: int


class Users(BaseModel):
    """Known users, most recently active first."""

    users: list[UserRow]
    total: int


class ItemView(BaseModel):
    """An item as a person reads it; ``because`` is the history item most like it (where the model can tell)."""

    item_id: str
    title: str
    genres: list[str]
    year: int | None
    score: float | None = None
    because: str | None = Field(None, description="title of the history item closest to this one")


class TryView(BaseModel):
    """One ``/recommend`` answer (it is a real one: served, logged and attributable) with what explains it."""

    user_id: str
    request_id: str
    model_version: str
    arm: str
    arms: dict[str, str]
    fallback: bool
    items: list[ItemView]
    history: list[ItemView] = Field(description="the user's recent items, most recent first")
    weighs_most: list[ItemView] = Field(description="history items that pull the list up most (empty: the model "
                                                    "cannot tell, e.g. a pipeline arm or a popular-items fallback)")
    published_at: str | None = Field(description="when the serving version was published")
    trained_through: int | None = Field(description="event-log offset the serving version was trained through "
                                                    "(null: trained offline)")
    applied_offset: int = Field(description="last event-log offset in this server's user histories")


class Published(BaseModel):
    """One retained registry version and when it was published."""

    time: float = Field(description="unix seconds")
    version: str


class LiveView(BaseModel):
    """Recent-window figures (``seekrec.serving.ui.live``) and the state they describe."""

    window_s: float
    qps: float | None
    events_per_s: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    freshness_p50_s: float | None
    freshness_p99_s: float | None
    freshness_pending: int = Field(description="acknowledged events no served version was trained on yet")
    event_log_lag: int | None = Field(description="events the online trainer has not committed")
    model_age_s: dict[str, float] = Field(description="arm -> seconds since its version was published")
    served: dict[str, str] = Field(description="arm -> version served now")
    published: list[Published] = Field(description="the registry's retained versions, oldest first")
    server_time: float


class VersionRow(BaseModel):
    version: str
    created: str
    model_name: str
    metrics: dict[str, Any]
    parent: str | None
    current: bool
    published_at: float | None
    offset: int | None = Field(description="event-log offset an online version was trained through")
    events_trained: int | None
    served_by: list[str] = Field(description="arms serving this version now")
    channels: list[str] = Field(description="registry channels pointing at it")
    pinned: bool


class CurvePoint(BaseModel):
    step: float
    value: float


class ModelsView(BaseModel):
    """The registry as the Models page shows it, oldest version first."""

    versions: list[VersionRow]
    current: str | None
    rollback_target: str | None
    curves: dict[str, list[CurvePoint]] = Field(description="the current version's training curves (its run's "
                                                            "metrics log, when the run is still on disk)")
    curves_of: str | None = Field(description="the version the curves belong to")


class ModelAction(BaseModel):
    """The result of a promote or rollback."""

    current: str | None
    detail: str
