"""Prometheus metrics of one app instance, in its own ``CollectorRegistry``.

A registry per instance rather than prometheus-client's global one: two apps in one process (tests,
or an A/B shadow) must not share or collide on counters, and importing this module registers nothing.
Gauges that describe the outside world (event-log lag, model freshness) are set when scraped, so
they are exact at the moment Prometheus reads them; so are the summaries of recent traffic (served-list
quality, calibration, drift), computed from bounded windows off the request path. docs/operations.md
lists every series with its labels and meaning.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from seekrec.online.metrics import register_process_metrics
from seekrec.serving.quality import NEW_ITEM_MAX_EVENTS, ArmQuality

STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServingMetrics:
    """Request counts and latencies by route, errors by kind, model versions, lag and freshness."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seekrec_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("seekrec_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("seekrec_errors", "Server-side errors by kind (model_load, event_tail, "
                              "read_your_writes, unhandled, ...)", ["kind"], registry=r)
        self.recommendations = Counter("seekrec_recommendations", "Recommendations served by arm, version, fallback",
                                       ["arm", "version", "fallback"], registry=r)
        self.batch_size = Histogram("seekrec_batch_size", "Requests per micro-batch forward pass",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.events = Counter("seekrec_events_accepted", "Events durably appended to the event log", registry=r)
        self.explored = Counter("seekrec_explored_slots", "Slots of served lists filled by exploration", registry=r)
        self.outcomes_lost = Counter("seekrec_outcome_records_lost", "Served-list records not logged, by reason "
                                     "(queue_full, write_failed, closed)", ["reason"], registry=r)
        self.swaps = Counter("seekrec_model_swaps", "Hot swaps to a new CURRENT version", registry=r)
        self.model_version = Gauge("seekrec_model_version_info", "1 for the version each arm serves",
                                   ["arm", "version"], registry=r)
        self.inference = Gauge("seekrec_model_inference_info", "1 per arm: its user encoder's precision (fp32, "
                               "int8) and its ANN index (kind and codec, e.g. flat-sq8)",
                               ["arm", "version", "encoder", "index"], registry=r)
        self.freshness = Gauge("seekrec_model_freshness_seconds", "Seconds since the served version was published",
                               ["arm", "version"], registry=r)
        self.lag = Gauge("seekrec_event_log_lag", "Events the consumer has not committed yet (end - committed)",
                         ["consumer"], registry=r)
        self.ready = Gauge("seekrec_ready", "1 when every arm has a model and histories are loaded", registry=r)
        self.rejected = Counter("seekrec_requests_rejected", "Requests refused by a limit, by reason (body_too_large, "
                                "rate_limited, overloaded, unknown_item)", ["reason"], registry=r)
        self.users = Gauge("seekrec_user_histories", "Users whose recent items the server keeps", registry=r)
        self.history_syncs = Counter("seekrec_history_syncs", "Event-log reads made so that a /recommend sees "
                                     "what other replicas appended (read_your_writes); one serves every request "
                                     "that waited on it", registry=r)
        # -- the request path's stages, freshness, outcomes (docs/operations.md) --
        register_process_metrics(r)
        self.stages = Histogram("seekrec_stage_duration_seconds", "Seconds per request-path stage: history (lookup "
                                "per request), encode, search (ANN), rank (exact rescoring or the ranker), per "
                                "micro-batch; rerank (the pipeline's, per batch; exploration's, per request)",
                                ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.event_freshness = Histogram("seekrec_event_freshness_seconds", "Seconds from acknowledging an event to "
                                         "serving a version trained through it (events this server acknowledged)",
                                         buckets=FRESHNESS_BUCKETS, registry=r)
        self.freshness_pending = Gauge("seekrec_event_freshness_pending", "Acknowledged events no served version "
                                       "was trained on yet", registry=r)
        self.recommend_errors = Counter("seekrec_recommend_errors", "Failed /recommend requests by the user's model "
                                        "arm", ["arm"], registry=r)
        self.served_items = Counter("seekrec_served_items", "Items shown in served lists, by model arm (the CTR "
                                    "denominator)", ["arm"], registry=r)
        self.attributed = Counter("seekrec_attributed_events", "Feedback events whose request_id names a list this "
                                  "server served that showed the item, by arm and event type (click, purchase, "
                                  "other)", ["arm", "event_type"], registry=r)
        self.coverage = Gauge("seekrec_served_coverage", "Share of the arm's catalogue in its recent served lists",
                              ["arm"], registry=r)
        self.popularity = Gauge("seekrec_served_popularity", "Mean popularity percentile of recently served items "
                                "(1: the most popular item)", ["arm"], registry=r)
        self.new_share = Gauge("seekrec_served_new_item_share", "Share of recently served slots holding an item "
                               f"with fewer than {NEW_ITEM_MAX_EVENTS} training interactions", ["arm"], registry=r)
        self.predicted_ctr = Gauge("seekrec_predicted_ctr", "Mean predicted click probability of recent settled "
                                   "slots (calibrated rankers)", ["arm"], registry=r)
        self.observed_ctr = Gauge("seekrec_observed_ctr", "Observed click rate of the same slots", ["arm"],
                                  registry=r)
        self.mape = Gauge("seekrec_prediction_mape", "MAPE of predicted against observed click rate over bins of "
                          "predicted probability (0.15: 15%)", ["arm"], registry=r)
        self.drift = Gauge("seekrec_drift_psi", "Population stability index of recent requests against the "
                           "version's reference", ["arm", "feature"], registry=r)
        self.users_evicted = Gauge("seekrec_user_histories_evicted", "Least recently active users forgotten to "
                                   "stay within max_users, since the histories were last built", registry=r)

    def set_versions(self, arms: dict[str, dict[str, Any]]) -> None:
        """Replace the version and freshness series with ``{arm: Predictor.describe()}``."""
        self.model_version.clear()
        self.inference.clear()
        self.freshness.clear()
        now = time.time()
        for arm, info in arms.items():
            self.model_version.labels(arm=arm, version=info["version"]).set(1)
            self.inference.labels(arm=arm, version=info["version"], encoder=info.get("encoder", "fp32"),
                                  index=str(info.get("index"))).set(1)
            published = published_at(info)
            if published is not None:
                self.freshness.labels(arm=arm, version=info["version"]).set(max(0.0, now - published))

    def set_quality(self, quality: dict[str, ArmQuality], drift: dict[str, dict[str, float]]) -> None:
        """Replace the served-list quality, calibration and drift series (an arm or feature without a
        measurement this scrape, NaN, has no series rather than a stale one)."""
        gauges = {"coverage": self.coverage, "popularity": self.popularity, "new_share": self.new_share,
                  "predicted_ctr": self.predicted_ctr, "observed_ctr": self.observed_ctr, "mape": self.mape}
        for gauge in (*gauges.values(), self.drift):
            gauge.clear()
        for arm, summary in quality.items():
            for name, gauge in gauges.items():
                value = getattr(summary, name)
                if value == value:  # not NaN
                    gauge.labels(arm=arm).set(value)
        for arm, features in drift.items():
            for feature, value in features.items():
                if value == value:
                    self.drift.labels(arm=arm, feature=feature).set(value)

    def render(self) -> bytes:
        """The Prometheus text exposition of this instance's registry."""
        return generate_latest(self.registry)


def published_at(info: dict[str, Any]) -> float | None:
    """Unix time of ``published_at`` (set by the online publisher) or else ``created``; None if neither parses."""
    for key in ("published_at", "created"):
        text = info.get(key)
        if isinstance(text, str):
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return float(text)
    return None


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request by its route *template* (``/recommend``, not the
    raw path, so unknown paths cannot blow up label cardinality) and observes its latency."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # stays 500 if the app raises before responding

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)
