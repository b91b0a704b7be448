"""Typed server settings: where models, events and user histories come from, and how requests are served.

One frozen dataclass validated at construction, so a typo in a CLI flag or TOML file fails before
anything loads; the A/B experiment is part of it because which versions load depends on the arms.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seekrec.config import from_table, load_config
from seekrec.experiments.definition import CURRENT, parse_arm_version
from seekrec.experiments.outcome_stores import outcome_log_beside
from seekrec.models.quantization import QUANTIZE_MODES
from seekrec.online.event_log import TRAINER_CONSUMER
from seekrec.online.histories import UNKNOWN_ITEM_POLICIES
from seekrec.retrieval.index import INDEX_CODECS

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ArmSettings:
    """One experiment arm: a pinned registry version (``"v000003"``), ``"current"`` or ``"channel:<name>"`` (a
    registry channel, moved by that arm's own online learner), and its traffic weight."""

    name: str
    version: str = CURRENT
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"arm name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            object.__setattr__(self, "version", parse_arm_version(self.version))
        except ValueError as exc:
            raise ValueError(f"arm {self.name!r}: {exc}") from exc
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"arm {self.name!r}: weight must be a finite number > 0, got {self.weight!r}")

    @classmethod
    def parse(cls, spec: str) -> ArmSettings:
        """``"name=version:weight"`` (CLI form), e.g. ``"treatment=current:0.5"`` or ``"control=v3:0.5"``."""
        name, sep, rest = spec.partition("=")
        version, _, weight = rest.partition(":")
        if not sep or not version:
            raise ValueError(f"arm spec {spec!r} must look like name=version[:weight], e.g. control=v000003:0.5")
        try:
            return cls(name, version, float(weight) if weight else 1.0)
        except ValueError as exc:
            raise ValueError(f"arm spec {spec!r}: {exc}") from exc


@dataclass(frozen=True)
class ExperimentSettings:
    """An A/B experiment: users are bucketed by a hash of ``name`` and their id, so renaming it reshuffles."""

    name: str = "default"
    arms: tuple[ArmSettings, ...] = (ArmSettings("live"),)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"experiment name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        arms = tuple(a if isinstance(a, ArmSettings) else ArmSettings(**a) for a in self.arms)
        if not arms:
            raise ValueError("an experiment needs at least one arm")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        object.__setattr__(self, "arms", arms)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``seekrec serve`` needs; each field's ``help`` is also its ``seekrec serve`` flag's help."""

    registry: Path = field(metadata={"help": "model registry root"})
    event_log: str = field(metadata={"help": "event log url: sqlite:///ABS/PATH.db, a path, or redis://host:port/db"})
    data_dir: Path | None = field(default=None, metadata={
        "help": "prepared dataset whose histories seed the users' recent items (none: the event log alone)"})
    host: str = "127.0.0.1"
    port: int = 8000
    default_k: int = field(default=10, metadata={"help": "items returned when a request gives no k"})
    history_len: int = field(default=200, metadata={
        "help": "items kept per user (the seen-filter's reach; the model reads its own max_len of them)"})
    candidates: int = field(default=200, metadata={"help": "ANN candidates scored per user, before the seen filter"})
    ann_threshold: int = field(default=50_000, metadata={"help": "catalogs with at least this many items use HNSW"})
    max_batch: int = field(default=64, metadata={"help": "micro-batch size"})
    max_wait_ms: float = field(default=2.0, metadata={"help": "micro-batch wait"})
    poll_interval_s: float = field(default=2.0, metadata={
        "help": "seconds between checks of the registry's CURRENT (hot swap) and the event log's tail"})
    # -- replicas (docs/serving.md "Replicas"): several servers on one shared event log and registry --
    read_your_writes: bool = field(default=False, metadata={
        "help": "before each /recommend, read what other replicas appended to the shared event log (one "
                "read serves every request waiting for it), so an event acknowledged by any replica shows "
                "in this one's next recommendation; off: other replicas' events show within poll_interval_s"})
    read_your_writes_timeout_ms: float = field(default=100.0, metadata={
        "help": "longest a /recommend waits for that read; past it (a slow or unreachable log) it answers "
                "from the histories as they are (counted in seekrec_errors_total{kind=\"read_your_writes\"})"})
    feature_store: str | None = field(default=None, metadata={
        "help": "Redis url of a feature store that replicas share for pipeline arms (?prefix=KEY, default "
                "seekrec:features); none: each pipeline arm keeps its own embedded store"})
    trainer_consumer: str = field(default=TRAINER_CONSUMER, metadata={
        "help": "the online trainer's event-log consumer name, for the lag metric"})
    device: str = "cpu"
    threads: int = field(default=1, metadata={
        "help": "torch and FAISS intra-op threads, 0: one per core. Micro-batches are small, and idle OpenMP "
                "workers spin on the cores that the event loop and other processes need"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile each loaded sequence model's user encoder (less CPU per request; about a "
                "minute of compilation per version, so for stable versions)"})
    quantize: str = field(default="none", metadata={
        "help": "'int8': dynamic int8 quantization of each loaded sequence model's user-encoder linear layers "
                "(CPU only; item embeddings stay fp32; docs/inference-int8.md) or 'none' (default: none)"})
    index_codec: str = field(default="fp32", metadata={
        "help": "how the ANN index stores item vectors: 'fp32' or 'sq8' (FAISS int8 scalar quantizer; candidates "
                "are still rescored with fp32 embeddings; docs/inference-int8.md) (default: fp32)"})
    # -- limits (docs/serving.md "Limits"): each one answers with a status naming the limit, never a slow death
    max_body_bytes: int = field(default=1_048_576, metadata={
        "help": "largest request body in bytes; a larger one is refused with 413 before it is parsed"})
    rate_limit_per_s: float = field(default=0.0, metadata={
        "help": "requests per second each client may sustain (keyed by client address); past its burst a "
                "client gets 429 with Retry-After. 0: no rate limit"})
    rate_limit_burst: int = field(default=1000, metadata={
        "help": "requests a client may send at once before rate_limit_per_s applies"})
    max_queue: int = field(default=512, metadata={
        "help": "requests waiting for a micro-batch; past it /recommend answers 503 with Retry-After at once "
                "instead of queueing until clients time out"})
    unknown_items: str = field(default="accept", metadata={
        "help": "events naming an item no served version knows: 'accept' (logged; the online trainer grows "
                "its item table for it) or 'reject' (422; only items of the served catalogs, including "
                "those added by POST /items, are accepted)"})
    max_users: int = field(default=500_000, metadata={
        "help": "user histories kept in memory; past it the least recently active user is forgotten "
                "(seekrec_user_histories_evicted counts them)"})
    experiment: ExperimentSettings = field(default_factory=ExperimentSettings)
    # -- access control and exposure (seekrec.serving.auth) --
    api_keys_file: Path | None = field(default=None, metadata={
        "help": "file of 'ROLE SHA256HEX' lines (roles: read, ingest, metrics, admin), re-read when it changes "
                "so keys rotate without a restart; SEEKREC_API_KEYS='ROLE:SHA256HEX,...' adds keys. "
                "Without any key the server listens on loopback only"})
    metrics_require_key: bool = field(default=False, metadata={
        "help": "with keys configured, GET /metrics needs a key with the metrics (or admin) role"})
    docs: bool = field(default=False, metadata={
        "help": "serve the interactive API docs at /docs and /redoc (their scripts load from a CDN; "
                "/openapi.json is always served)"})
    # -- faults and start-up ------------------------------------------------------------------
    background_start: bool = field(default=True, metadata={
        "help": "answer /healthz at once and load models, histories and the event log in the background "
                "(/readyz turns 200 when done); off: start-up waits for them and fails on the first error"})
    retry_after_s: int = field(default=2, metadata={
        "help": "Retry-After seconds of the 503 answered while the event log is unavailable"})
    items_journal: Path | None = field(default=None, metadata={
        "help": "file journaling items added by POST /items, replayed at start-up "
                "(default: added_items.jsonl in the registry)"})
    experiments: Path | None = field(default=None, metadata={
        "help": "layered experiments and gradual rollouts (TOML, docs/experiments.md); replaces --arm (default: "
                "the single experiment of --arm)"})
    rollout_dir: Path | None = field(default=None, metadata={
        "help": "the rollouts' state files every replica follows (default: rollouts/ in the registry)"})
    rollout_controller: bool = field(default=True, metadata={
        "help": "judge the rollouts from the logs and move them in this process (run it on one replica)"})
    rollout_interval_s: float = field(default=10.0, metadata={
        "help": "seconds between two looks of the rollout controller"})
    attribution_window_s: float = field(default=1800.0, metadata={
        "help": "an event credits a list served at most this many seconds before it"})
    outcome_log: str | None = field(default=None, metadata={
        "help": "where every served list is logged for experiments (request id, arms, version, items, latency): a "
                "path, sqlite:///ABS/PATH.db or redis://host:port/db; 'off' logs nothing (default: beside the event "
                "log, <name>-served.db, or the stream seekrec:served on its Redis)"})
    outcome_queue: int = field(default=10_000, metadata={
        "help": "served lists waiting to be written; beyond it they are dropped and counted, never waited for"})
    # -- response cache and request log (docs/serving-cache.md) --
    response_cache_size: int = field(default=20_000, metadata={
        "help": "lists kept per (user, arm, k, exclude_seen) and served again until the user's next event or a model "
                "swap (least recently used out first); 0: no response cache"})
    response_cache_ttl_s: float = field(default=300.0, metadata={
        "help": "longest a cached list is served (a bound on memory held for users who went quiet)"})
    hot_items: int = field(default=1000, metadata={
        "help": "most popular items whose attributes a pipeline arm keeps in memory instead of reading them from the "
                "shared Redis feature store (--feature-store) per request; 0: off. An embedded store is all in memory"})
    request_log: Path | None = field(default=None, metadata={
        "help": "JSONL file of every /recommend request and response, written by a background thread (none: off)"})
    request_log_queue: int = field(default=10_000, metadata={
        "help": "request-log lines waiting to be written; beyond it they are dropped and counted, never waited for"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", Path(self.registry))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if not str(self.event_log):
            raise ValueError("event_log is empty: pass an event log url, e.g. sqlite:///abs/path/events.db")
        object.__setattr__(self, "event_log", str(self.event_log))
        if isinstance(self.experiment, dict):
            object.__setattr__(self, "experiment", ExperimentSettings(**self.experiment))
        limits = {"port": (0, 65535), "default_k": (1, 1000), "history_len": (1, 100_000),
                  "candidates": (1, 100_000), "ann_threshold": (0, 10**12), "max_batch": (1, 4096),
                  "threads": (0, 1024), "max_body_bytes": (1024, 2**31), "rate_limit_burst": (1, 10**9),
                  "max_queue": (1, 10**7), "max_users": (1, 10**9), "outcome_queue": (1, 10**8)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"ServeSettings.{name} must be an integer in {low}..{high}, got {value!r}")
        for name in ("max_wait_ms", "poll_interval_s", "rate_limit_per_s", "read_your_writes_timeout_ms",
                     "rollout_interval_s", "attribution_window_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name in ("poll_interval_s", "read_your_writes_timeout_ms", "rollout_interval_s",
                                              "attribution_window_s") and value == 0):
                raise ValueError(f"ServeSettings.{name} must be a finite number of at least 0 "
                                 f"(poll_interval_s and read_your_writes_timeout_ms > 0), got {value!r}")
        if not isinstance(self.read_your_writes, bool):
            raise ValueError(f"ServeSettings.read_your_writes must be true or false, got {self.read_your_writes!r}")
        if self.feature_store is not None and not str(self.feature_store).startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"ServeSettings.feature_store must be a Redis url (redis://host:port/db?prefix=KEY), "
                             f"got {self.feature_store!r}")
        if self.unknown_items not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(f"ServeSettings.unknown_items must be one of {UNKNOWN_ITEM_POLICIES}, "
                             f"got {self.unknown_items!r}")
        if self.items_journal is not None:
            object.__setattr__(self, "items_journal", Path(self.items_journal))
        for name in ("experiments", "rollout_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not isinstance(self.rollout_controller, bool):
            raise ValueError(f"ServeSettings.rollout_controller must be true or false, got {self.rollout_controller!r}")
        if not isinstance(self.background_start, bool):
            raise ValueError(f"ServeSettings.background_start must be true or false, got {self.background_start!r}")
        if isinstance(self.retry_after_s, bool) or not isinstance(self.retry_after_s, int) \
                or not 1 <= self.retry_after_s <= 3600:
            raise ValueError(f"ServeSettings.retry_after_s must be an integer in 1..3600, got {self.retry_after_s!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"ServeSettings.compile must be true or false, got {self.compile!r}")
        self._check_int8()
        if not self.trainer_consumer:
            raise ValueError("trainer_consumer must be a non-empty consumer name")
        self._check_perimeter()
        self._check_cache()

    def _check_int8(self) -> None:
        """The int8 options (docs/inference-int8.md): known values, and int8 encoders only on the CPU."""
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"ServeSettings.quantize must be one of {QUANTIZE_MODES}, got {self.quantize!r}")
        if self.index_codec not in INDEX_CODECS:
            raise ValueError(f"ServeSettings.index_codec must be one of {INDEX_CODECS}, got {self.index_codec!r}")
        if self.quantize == "int8" and self.device != "cpu":
            raise ValueError(f"ServeSettings.quantize='int8' runs on CPU only (torch dynamic quantization), but device "
                             f"is {self.device!r}: serve with device cpu or quantize none")

    def _check_perimeter(self) -> None:
        """The access-control and exposure fields (``serving/auth.py`` reads the keys file itself)."""
        if self.api_keys_file is not None:
            object.__setattr__(self, "api_keys_file", Path(self.api_keys_file))
        for name in ("metrics_require_key", "docs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ServeSettings.{name} must be true or false, got {getattr(self, name)!r}")

    def _check_cache(self) -> None:
        """The response cache and request log fields."""
        for name, low in (("response_cache_size", 0), ("request_log_queue", 1), ("hot_items", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**8:
                raise ValueError(f"ServeSettings.{name} must be an integer in {low}..{10**8}, got {value!r}")
        ttl = self.response_cache_ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"ServeSettings.response_cache_ttl_s must be finite seconds > 0, got {ttl!r}")
        if self.request_log is not None:
            object.__setattr__(self, "request_log", Path(self.request_log))

    @property
    def rollout_path(self) -> Path:
        """Where the rollouts' state files live: beside the registry's versions unless configured."""
        return self.rollout_dir if self.rollout_dir is not None else self.registry / "rollouts"

    @property
    def outcome_log_url(self) -> str | None:
        """The outcome log to open (None: 'off')."""
        if self.outcome_log is None:
            return outcome_log_beside(self.event_log)
        return None if str(self.outcome_log).lower() == "off" else str(self.outcome_log)

    @property
    def items_journal_path(self) -> Path:
        """Where added items are journaled: beside the registry's versions unless configured."""
        return self.items_journal if self.items_journal is not None else self.registry / "added_items.jsonl"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ServeSettings:
        """Settings from a plain dict (a TOML ``[serve]`` table); unknown keys are named in the error."""
        return from_table(cls, raw)

    @classmethod
    def load(cls, path: str | Path | None, overrides: Sequence[str] = (), **flags: Any) -> ServeSettings:
        """Read a TOML file (its ``[serve]`` table if present, else the top level; ``None``: no file);
        ``flags`` win where not ``None``, so CLI flags pass straight through; ``key=value`` overrides last."""
        values = {k: v for k, v in flags.items() if v is not None}
        return load_config(cls, path, overrides, values=values, table="serve")
