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


class ArmRow(BaseModel):
    """One arm: as configured, and what it did in the window (figures null until it served)."""

    name: str
    version: str | None = Field(None, description="the registry version it serves (null: not a model arm)")
    share: float | None = Field(None, description="its share of the experiment's users now (a rollout: per stage)")
    params: dict[str, Any] = Field(default_factory=dict)
    users: int = 0
    lists: int = 0
    clicks: int = 0
    ctr: float | None = Field(None, description="distinct items clicked / items shown, over its users' lists")
    ctr_low: float | None = None
    ctr_high: float | None = None
    diff: float | None = Field(None, description="CTR minus control's (delta method), with its confidence interval")
    diff_low: float | None = None
    diff_high: float | None = None
    p_value: float | None = Field(None, description="fixed-horizon p-value of the CTR difference")
    p_value_sequential: float | None = Field(None, description="always-valid (mSPRT) p-value of the CTR difference")


class ArmSeries(BaseModel):
    """One arm's cumulative CTR at the end of each bucket, its band and (a treatment) its always-valid p-value."""

    arm: str
    times: list[float]
    ctr: list[float | None]
    ctr_low: list[float | None]
    ctr_high: list[float | None]
    p_value: list[float | None] | None = Field(description="against control; null for control itself")


class SrmView(BaseModel):
    """The sample-ratio check: users per arm against the configured split (chi-square)."""

    arms: list[str]
    users: list[int]
    expected: list[float]
    p_value: float | None
    mismatch: bool = Field(description="p below alpha: the assignment is broken and no result can be trusted")
    alpha: float
    scope: str = Field(description="which users were counted")


class StageRow(BaseModel):
    at: float
    action: str
    from_stage: int
    to_stage: int
    reasons: list[str]
    source: str


class RolloutView(BaseModel):
    """A rollout's state file: where it is and every change so far."""

    stage: int
    steps: int
    status: str
    treatment_share: float
    stage_started_at: float
    history: list[StageRow]
    last_decision: StageRow | None


class InterleavingView(BaseModel):
    """An interleaving experiment's two tests (``seekrec.experiments.report.interleaving_report``)."""

    experiment: str
    lists: int
    users: int
    lists_with_a_winner: int
    users_preferring_first: int
    users_preferring_second: int
    users_tied: int
    delta: float | None = Field(description="preference for the second ranker (sign test over users)")
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    click_difference: float | None = Field(None, description="clicks per user on items only one ranker showed, "
                                                             "second minus first (paired t-test)")
    click_ci_low: float | None = None
    click_ci_high: float | None = None
    p_value_clicks: float | None = None


class ExperimentView(BaseModel):
    name: str
    layer: str
    kind: str = Field(description="ab, rollout or interleave")
    description: str
    control: str
    arms: list[ArmRow]
    timeline: list[ArmSeries]
    srm: SrmView | None
    rollout: RolloutView | None = Field(description="the rollout's state (null: not a rollout, or not started)")
    interleaving: InterleavingView | None


class ExperimentsView(BaseModel):
    """Every experiment of the server, with figures from the lists served in ``[since, until)``."""

    since: float
    until: float
    lists: int = Field(description="served lists read from the outcome log")
    events: int = Field(description="events read from the event log")
    truncated: bool = Field(description="the window held more lists than are read per look; the newest are left out")
    alpha: float = Field(description="1 - the confidence of the bands: the p-value chart's line")
    note: str | None = Field(description="why there are no figures (no outcome log, logs unreadable)")
    experiments: list[ExperimentView]
