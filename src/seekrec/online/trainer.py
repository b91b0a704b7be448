"""``seekrec stream-train``: the offline training step run over the unbounded event stream.

The loop reads new events after its position, turns each into a next-item example (plus replayed
recent examples), takes one step with the same ``TrainStep`` that runs offline epochs, and every
N events or T seconds publishes a model version and saves a checkpoint.

Durability: a checkpoint (weights, optimiser, RNG and replay generator, log position) is written
atomically and only then is the position committed to the event log, so the committed position
never runs ahead of a saved model. After ``kill -9`` the trainer restarts from its last checkpoint
and reads the events after it again: no event is lost, at most the uncommitted tail is trained twice.

Per-arm learning: with a ``traffic`` filter (``seekrec stream-train --experiments FILE --arm EXP=ARM``) the
trainer learns only from the events of the users the server assigns to one experiment arm, and with
``channel`` it publishes to a registry channel that only that arm serves (``channel:<name>``), instead of
promoting CURRENT: a shared learner would carry what the treatment's users taught it into the control.
Histories and the catalog still see every event, so item ids match an unfiltered replay.

Restart: histories and the catalog are derived state. They are rebuilt from the dataset and the
base catalog pinned in ``state_dir`` at first start, then the log is replayed up to the checkpoint's
position. Replay is deterministic, so new items get the same ids as before the restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol, TypeVar

import torch
from torch.optim.lr_scheduler import LambdaLR

from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.io import atomic_write_bytes
from seekrec.models.factory import build_loss, build_model
from seekrec.models.losses import LossConfig
from seekrec.models.task import NextItemTask
from seekrec.online.event_log import TRAINER_CONSUMER, EventLogUnavailableError, LoggedEvent
from seekrec.online.factory import open_event_log
from seekrec.online.histories import UNKNOWN_ITEM_POLICIES
from seekrec.online.metrics import TrainerMetrics
from seekrec.online.updates import StreamExamples, grow_items_keeping_state
from seekrec.registry import ModelRegistry, RegistryError, parse_channel
from seekrec.training.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext, resolve_device
from seekrec.training.metrics_log import MetricsLog
from seekrec.training.step import TrainStep, build_optimizer

log = logging.getLogger(__name__)
RETRY_FIRST_DELAY_S, RETRY_MAX_DELAY_S = 0.5, 30.0  # backoff while the event log is unavailable
_T = TypeVar("_T")

CHECKPOINT_DIR = "checkpoints"
BASE_CATALOG_FILE = "base_catalog.json"  # the catalog before any online event, pinned at first start
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


@dataclass
class OnlineTrainerConfig:
    """Where the online trainer reads and writes, how it learns and how often it publishes.

    ``max_events``, ``max_seconds`` and ``stop_when_idle`` end a run; all unset runs until stopped
    (SIGTERM / SIGINT stop it cleanly: publish, checkpoint, commit). Each field's ``help`` is also its
    ``seekrec stream-train`` flag's help.
    """

    registry: str | Path = field(metadata={"help": "model registry root: the model it trains and publishes to"})
    event_log: str = field(metadata={"help": "event log url: sqlite:///ABS/PATH.db, a path, or redis://host:port/db"})
    dataset: str | Path = field(metadata={"help": "the prepared dataset the base model was trained on"})
    state_dir: str | Path = field(metadata={"help": "checkpoint directory (resumes from it)"})
    consumer: str = field(default=TRAINER_CONSUMER, metadata={
        "help": "event-log consumer name (keys the committed position)"})
    max_len: int | None = field(default=None, metadata={"help": "history length per example (none: the base model's)"})
    events_per_step: int = field(default=64, metadata={"help": "new events per optimiser step"})
    replay_ratio: float = field(default=3.0, metadata={"help": "replayed examples per new event"})
    replay_window: int = field(default=10_000, metadata={"help": "replay from the most recent N examples"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate (constant: online learning never ends)"})
    weight_decay: float = 0.0
    clip_norm: float | None = field(default=1.0, metadata={"help": "gradient norm clip (none: no clipping)"})
    publish_every_events: int = field(default=1000, metadata={"help": "publish a version after this many events"})
    publish_every_seconds: float = field(default=60.0, metadata={"help": "publish a version after this many seconds"})
    block_ms: int = field(default=1000, metadata={"help": "milliseconds one read of the log waits for new events"})
    seed: int = 0
    device: str = "auto"
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (none: torch's default); on cores shared with a server, 1 thread is far "
                "faster than threads spinning against each other"})
    registry_keep: int = field(default=10, metadata={"help": "newest registry versions kept after each publish"})
    max_events: int | None = field(default=None, metadata={"help": "stop after training this many events in this "
                                                                   "process (none: run until stopped)"})
    max_seconds: float | None = field(default=None, metadata={"help": "stop after this long (none: until stopped)"})
    stop_when_idle: bool = field(default=False, metadata={"help": "stop once the log is drained"})
    channel: str | None = field(default=None, metadata={
        "help": "publish to this registry channel instead of promoting CURRENT; the server's arm with version "
                "channel:NAME serves it (one learner per experiment arm; none: promote CURRENT)"})
    unknown_items: str = field(default="accept", metadata={
        "help": "events naming an item outside the catalog: 'accept' grows the item table for it, 'reject' "
                "skips the event (the server's --unknown-items; keep the two the same)"})
    metrics_port: int | None = field(default=None, metadata={
        "help": "serve Prometheus metrics (events trained, loss, lag, last publish, process CPU and memory) on "
                "this port (none or 0: off)"})
    metrics_host: str = field(default="127.0.0.1", metadata={
        "help": "address the metrics port binds (0.0.0.0 in a container that Prometheus scrapes from outside)"})
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        if not self.consumer:
            raise ValueError("consumer must be a non-empty name (it keys the committed log position)")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"max_len must be >= 1 or None (the base model's), got {self.max_len}")
        if self.events_per_step < 1 or self.replay_window < 1 or self.publish_every_events < 1:
            raise ValueError("events_per_step, replay_window and publish_every_events must be >= 1")
        if self.replay_ratio < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("replay_ratio and weight_decay must be >= 0 and lr > 0")
        if self.publish_every_seconds <= 0 or self.block_ms < 0:
            raise ValueError("publish_every_seconds must be > 0 and block_ms >= 0")
        for name in ("max_events", "max_seconds"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, or None to run until stopped")
        if self.unknown_items not in UNKNOWN_ITEM_POLICIES:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEM_POLICIES}, got {self.unknown_items!r}")
        if self.channel is not None:
            try:
                parse_channel(self.channel)
            except RegistryError as exc:
                raise ValueError(str(exc)) from exc
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None (torch's default), got {self.threads}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be a TCP port (0 or none: no metrics), got {self.metrics_port}")


class UserFilter(Protocol):
    """The users whose events a per-arm learner trains on (``seekrec.experiments.ArmTraffic``)."""

    name: str  # recorded in checkpoints: resuming a state dir with another filter is refused

    def __call__(self, user_id: str) -> bool: ...


def _constant(step: int) -> float:
    return 1.0  # online learning never ends, so no schedule: a small constant lr


class OnlineTrainer:
    """Trains the current registry model on new events and publishes versions; see the module docstring.

    Counters for dashboards and the demo: ``position``, ``events_trained`` (all runs),
    ``events_this_run``, ``published`` (versions this run), ``last_publish_time`` (unix seconds).
    Use as a context manager so the event log and the ``state_dir`` lock are released.
    """

    def __init__(self, config: OnlineTrainerConfig, traffic: UserFilter | None = None) -> None:
        self.config, self.traffic = config, traffic
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry(config.registry, keep=config.registry_keep)
        self.metrics = MetricsLog(self.state_dir / METRICS_FILE)
        self.device = resolve_device(config.device)
        self.published: list[str] = []
        self.last_publish_time: float | None = None
        self.events_this_run = 0
        self.last_loss: float | None = None
        self.exported = TrainerMetrics()  # Prometheus (``metrics`` is the JSONL log)
        self._stop = threading.Event()
        with contextlib.ExitStack() as stack:  # a failed start-up releases the lock and the log at once
            stack.callback(os.close, _lock(self.state_dir / LOCK_FILE))
            _end_partial_line(self.metrics.path)
            self.events = stack.enter_context(open_event_log(config.event_log))
            checkpoint = latest_checkpoint(self.state_dir / CHECKPOINT_DIR)
            if checkpoint is None:
                self._start_fresh()
            else:
                self._restore(checkpoint)
            if config.metrics_port:
                server = self.exported.serve(config.metrics_port, config.metrics_host)
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
            self._resources = stack.pop_all()

    # -- start-up ---------------------------------------------------------------------------
    def _start_fresh(self) -> None:
        committed = self.events.committed(self.config.consumer)
        if committed > 0:
            raise ValueError(
                f"consumer {self.config.consumer!r} committed offset {committed} but {self.state_dir} holds no "
                "checkpoint: restore that state dir, or pick a new consumer name to train from the start of the log"
            )
        loaded = self.registry.load(device=self.device)
        doc, catalog_path = loaded.manifest, loaded.directory / CATALOG_FILE
        if "offset" in doc["extra"]:
            raise ValueError(f"current version {loaded.version} was published by an online trainer (offset "
                             f"{doc['extra']['offset']}): resume with its state dir, or promote the offline version "
                             f"it grew from ({doc['extra'].get('base_version')}) to start over")
        if not catalog_path.is_file():
            raise RegistryError(f"{loaded.version} has no {CATALOG_FILE}; publish a run trained by this seekrec")
        atomic_write_bytes(self.state_dir / BASE_CATALOG_FILE, catalog_path.read_bytes())
        self.state: dict[str, Any] = {
            "position": 0, "events_trained": 0, "steps": 0, "checkpoint_index": 0, "trained_through_timestamp": None,
            "model_name": doc["model_name"], "model_config": doc["model_config"], "data_spec": doc["data_spec"],
            "base_version": loaded.version, "published_version": loaded.version,
            "traffic": None if self.traffic is None else self.traffic.name,
        }
        self.model = loaded.model
        torch.manual_seed(self.config.seed)  # dropout draws from the global generator; checkpoints carry it on
        self._prepare(build_optimizer(self.model, self._train_config()), extras={})
        self._checkpoint()  # from now on a restart never reads CURRENT, which this trainer will move
        log.info("online trainer started from %s (%d items)", loaded.version, self.model.n_items)

    def _restore(self, path: Path) -> None:
        self.state = json.loads((path / STATE_FILE).read_text())
        n_items = int(self.state["n_items"])
        self.model = build_model(self.state["model_name"], {**self.state["model_config"], "n_items": n_items},
                                 n_items).to(self.device)
        optimizer = build_optimizer(self.model, self._train_config())
        state, extras = load_checkpoint(path, self.model, optimizer)
        # "step" and "optimizer_meta" belong to the file; carried along they would shadow the next save's
        self.state = {k: v for k, v in state.items() if k not in ("step", "optimizer_meta")}
        wanted = None if self.traffic is None else self.traffic.name
        if self.state.get("traffic") != wanted:
            raise ValueError(f"{self.state_dir} trained on the traffic of {self.state.get('traffic') or 'every user'}, "
                             f"not {wanted or 'every user'}: use another state dir (and consumer) for another arm")
        committed = self.events.committed(self.config.consumer)
        if committed > self.state["position"]:
            raise ValueError(f"consumer {self.config.consumer!r} committed offset {committed}, past the checkpoint "
                             f"{path} (offset {self.state['position']}): the state dir is older than the log's record")
        self._prepare(optimizer, extras)
        if committed < self.position:
            self.events.commit(self.config.consumer, self.position)  # killed between checkpoint and commit
        log.info("online trainer resumed from %s at offset %d", path, self.position)

    def _prepare(self, optimizer: torch.optim.Optimizer, extras: dict[str, torch.Tensor]) -> None:
        """Rebuild derived state (catalog, histories, replay) up to the position, then the step."""
        cfg = self.config
        model_max_len = int(self.state["model_config"]["max_len"])
        self.max_len = cfg.max_len or model_max_len
        if self.max_len > model_max_len:
            raise ValueError(f"max_len {self.max_len} exceeds the model's max_len {model_max_len}")
        self.catalog = Catalog.from_bytes((self.state_dir / BASE_CATALOG_FILE).read_bytes())
        self.examples = StreamExamples(cfg.dataset, self.catalog, self.max_len, cfg.replay_window,
                                       add_items=cfg.unknown_items == "accept",
                                       with_context=bool(getattr(self.model.config, "needs_context", False)))
        position = int(self.state["position"])
        self.examples.catch_up(self.events, position, keep=self.traffic)
        if "n_items" in self.state and len(self.catalog.items) != self.state["n_items"]:
            raise ValueError(f"replaying the log to offset {position} gave {len(self.catalog.items)} items, the "
                             f"checkpoint has {self.state['n_items']}: the log or {BASE_CATALOG_FILE} changed")
        self.model.to(self.device)
        self.optimizer = optimizer
        for group in self.optimizer.param_groups:  # the configured lr wins over a checkpoint's
            group["lr"] = group["initial_lr"] = cfg.lr
        if len(self.catalog.items) > self.model.n_items:
            self.optimizer = grow_items_keeping_state(self.model, self.optimizer, len(self.catalog.items),
                                                      self._train_config())
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if "replay_generator" in extras:
            self.generator.set_state(extras["replay_generator"])
        self.task = NextItemTask(self.model, self._loss(), seed=cfg.seed)
        if "task_generator" in extras:
            self.task.load_state_dict({"seed": cfg.seed, "generator_state": extras["task_generator"]})
        self._build_step()

    def _train_config(self) -> TrainConfig:
        cfg = self.config
        return TrainConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=0, clip_norm=cfg.clip_norm,
                           batch_size=cfg.events_per_step, seed=cfg.seed, device=str(self.device))

    def _loss(self) -> torch.nn.Module:
        counts = torch.from_numpy(self.catalog.counts.astype("float64"))
        return build_loss(self.config.loss, len(self.catalog.items), item_counts=counts)

    def _build_step(self) -> None:
        scheduler = LambdaLR(self.optimizer, _constant)
        self.step_fn = TrainStep(self.model, self.task, self.optimizer, scheduler, self._train_config(),
                                 DistContext(0, 1, 0, self.device),
                                 after_update=getattr(self.model, "update_routing_bias", None))

    # -- counters ---------------------------------------------------------------------------
    @property
    def position(self) -> int:
        """Offset of the last event trained on (0: none)."""
        return self.examples.position

    @property
    def events_trained(self) -> int:
        return int(self.state["events_trained"])

    # -- loop -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, publish what is new, checkpoint, commit and return from ``run``."""
        self._stop.set()

    def stream(self) -> Iterator[list[LoggedEvent]]:
        """The unbounded iterator: each read of new events after the position (an empty list when
        ``block_ms`` passed without any, so time-based publishing still runs) until a stop condition."""
        cfg, start = self.config, time.monotonic()
        while not self._stop.is_set():
            limit = cfg.events_per_step
            if cfg.max_events is not None:
                limit = min(limit, cfg.max_events - self.events_this_run)
            if limit <= 0 or (cfg.max_seconds is not None and time.monotonic() - start >= cfg.max_seconds):
                return
            batch = self._through_outages(
                "read", lambda: self.events.read(self.position, limit=limit, block_ms=cfg.block_ms))
            if batch is None:  # stopped while the log was unavailable
                return
            if not batch and cfg.stop_when_idle:
                return
            yield batch

    def _through_outages(self, what: str, call: Callable[[], _T]) -> _T | None:
        """``call()``, retried with exponential backoff (0.5 s doubling to ``RETRY_MAX_DELAY_S``) while
        the event log is unavailable (Redis down, paused or timing out; SQLite locked or full), so an
        outage pauses training instead of killing it with a traceback. The outage is logged when it
        starts and when it ends. ``None`` when a stop is requested meanwhile."""
        delay, failures, since = RETRY_FIRST_DELAY_S, 0, time.monotonic()
        while True:
            try:
                result = call()
            except EventLogUnavailableError as exc:
                if failures == 0:
                    log.error("event log unavailable during %s: %s; retrying with backoff", what, exc)
                    self.metrics.append({"kind": "outage", "time": time.time(), "during": what, "error": str(exc)})
                failures += 1
                if self._stop.wait(delay):
                    log.warning("stop requested while the event log is unavailable (%s not done)", what)
                    return None
                delay = min(delay * 2, RETRY_MAX_DELAY_S)
                continue
            if failures:
                log.warning("event log available again after %.1f s (%d failed attempts at %s)",
                            time.monotonic() - since, failures, what)
                self.metrics.append({"kind": "recovered", "time": time.time(), "during": what, "failures": failures})
            return result

    def run(self) -> dict[str, Any]:
        """The shared step over ``stream()``, plus publishing; returns ``summary()`` once stopped."""
        cfg = self.config
        start = last_publish = time.monotonic()
        since_publish, busy = 0, 0.0
        self.metrics.append({"kind": "start", "time": time.time(), "pid": os.getpid(), "position": self.position,
                             "events_trained": self.events_trained, "n_items": self.model.n_items})
        for batch in self.stream():
            if batch:
                busy += self.step(batch)
                since_publish += len(batch)
            if since_publish and (since_publish >= cfg.publish_every_events
                                  or time.monotonic() - last_publish >= cfg.publish_every_seconds):
                self.publish()
                since_publish, last_publish = 0, time.monotonic()
        if since_publish:  # a clean stop leaves nothing trained but unpublished and uncommitted
            self.publish()
        summary = self.summary()
        summary["events_per_second"] = self.events_this_run / busy if busy else 0.0
        summary["seconds"] = time.monotonic() - start
        self.metrics.append({"kind": "stop", "time": time.time(), **summary})
        return summary

    def step(self, events: list[LoggedEvent]) -> float:
        """Consume one read of events and take one optimiser step on them; returns seconds spent."""
        t0 = time.perf_counter()
        rows, max_ts = self.examples.consume(events, keep=self.traffic)
        if len(self.catalog.items) > self.model.n_items:
            self._grow()
        record: dict[str, Any] = {"kind": "train", "time": time.time(), "from": events[0].offset,
                                  "to": self.position, "events": len(events), "examples": len(rows)}
        if len(rows):
            train_batch, replayed = self.examples.batch(rows, self.config.replay_ratio, self.generator)
            stats = self.step_fn([train_batch])
            self.last_loss = stats.loss
            record.update(replayed=replayed, loss=stats.loss, grad_norm=stats.grad_norm)
            self.state["steps"] += 1
        self.state["events_trained"] += len(events)
        if max_ts is not None:
            prev = self.state["trained_through_timestamp"]
            self.state["trained_through_timestamp"] = max_ts if prev is None else max(prev, max_ts)
        self.events_this_run += len(events)
        seconds = time.perf_counter() - t0
        record.update(seconds=seconds, events_per_s=len(events) / seconds, lag=self._lag())
        self.metrics.append(record)
        self.exported.stepped(len(events), seconds, record)
        return seconds

    def _grow(self) -> None:
        n_items = len(self.catalog.items)
        log.info("catalog grew to %d items: growing the model's item table", n_items)
        self.optimizer = grow_items_keeping_state(self.model, self.optimizer, n_items, self._train_config())
        self.task.loss = self._loss()  # sampled losses draw negatives from 1..n_items
        self._build_step()

    # -- publishing and durability ----------------------------------------------------------
    def publish(self) -> str:
        """Publish the model with the grown catalog and promote it (or move the channel), then checkpoint and
        commit."""
        t0 = time.perf_counter()
        extra = {"offset": self.position, "events_trained": self.events_trained, "traffic": self.state.get("traffic"),
                 "trained_through_timestamp": self.state["trained_through_timestamp"], "published_at": time.time(),
                 "base_version": self.state["base_version"]}
        metrics = {} if self.last_loss is None else {"online/loss": self.last_loss}
        version = self.registry.publish(
            self.model, model_name=self.state["model_name"],
            model_config={**self.state["model_config"], "n_items": self.model.n_items}, metrics=metrics,
            parent=self.state["published_version"], data_spec=self.state["data_spec"], extra=extra,
            extra_files={CATALOG_FILE: self.catalog.to_bytes()}, promote=self.config.channel is None,
            channel=self.config.channel,
        )
        publish_s = time.perf_counter() - t0
        self.state["published_version"] = version
        self.published.append(version)
        self.last_publish_time = time.time()
        self.exported.publishing(self.position)
        checkpoint_s = self._checkpoint()
        self.metrics.append({"kind": "publish", "time": self.last_publish_time, "version": version,
                             "offset": self.position, "n_items": self.model.n_items, "publish_s": publish_s,
                             "checkpoint_s": checkpoint_s})
        log.info("published %s at offset %d (%d items) in %.3fs", version, self.position, self.model.n_items, publish_s)
        return version

    def _checkpoint(self) -> float:
        """Save a checkpoint atomically, THEN commit its position: the commit never outruns the model."""
        t0 = time.perf_counter()
        self.state.update(position=self.position, n_items=self.model.n_items,
                          checkpoint_index=self.state["checkpoint_index"] + 1)
        extras = {"replay_generator": self.generator.get_state()}
        task_state = self.task.state_dict()["generator_state"]
        if task_state is not None:
            extras["task_generator"] = task_state
        save_checkpoint(self.state_dir / CHECKPOINT_DIR, self.state["checkpoint_index"], self.model,
                        self.optimizer, self.state, extras)
        # the checkpoint holds the position, so a commit given up on at a stop is redone from it at restart
        position = self.position
        if self._through_outages("commit", lambda: self.events.commit(self.config.consumer, position) or True) is None \
                and self._stop.is_set():
            return time.perf_counter() - t0
        self.metrics.append({"kind": "commit", "time": time.time(), "position": self.position})
        return time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        """Counters and the position, as ``run`` returns them (plus its rate and duration)."""
        return {"position": self.position, "events_trained": self.events_trained,
                "events_this_run": self.events_this_run, "steps": self.state["steps"],
                "versions_published": list(self.published), "current_version": self.state["published_version"],
                "n_items": self.model.n_items, "lag": self._lag(),
                "last_loss": self.last_loss}

    def _lag(self) -> int | None:
        """Events in the log past the position; ``None`` while the log is unavailable."""
        try:
            return self.events.end_offset() - self.position
        except EventLogUnavailableError:
            return None

    def close(self) -> None:
        """Close the event log and release the ``state_dir`` lock (idempotent)."""
        self._resources.close()

    def __enter__(self) -> OnlineTrainer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def run_online_trainer(config: OnlineTrainerConfig, traffic: UserFilter | None = None) -> dict[str, Any]:
    """Entry point of ``seekrec stream-train``: run until a stop condition; SIGTERM / SIGINT stop cleanly."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    with _start_through_outages(config, traffic) as trainer:
        if threading.current_thread() is not threading.main_thread():
            return trainer.run()

        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping after the current step", signum)
            trainer.request_stop()

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return trainer.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _start_through_outages(config: OnlineTrainerConfig, traffic: UserFilter | None) -> OnlineTrainer:
    """``OnlineTrainer(config)``, retried with backoff while the event log cannot be reached (a trainer
    started before Redis, or during an outage, waits for it instead of exiting); gives up after
    ``max_seconds`` when that is set."""
    delay, failures, started = RETRY_FIRST_DELAY_S, 0, time.monotonic()
    while True:
        try:
            trainer = OnlineTrainer(config, traffic)
        except (EventLogUnavailableError, ConnectionError) as exc:
            if config.max_seconds is not None and time.monotonic() - started + delay > config.max_seconds:
                raise
            if failures == 0:
                log.error("event log unavailable at start-up: %s; retrying with backoff", exc)
            failures += 1
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
            continue
        if failures:
            log.warning("event log reachable after %.1f s (%d failed starts)", time.monotonic() - started, failures)
        return trainer


def _lock(path: Path) -> int:
    """Exclusive ``flock`` on the state dir: two trainers there would interleave checkpoints.

    The kernel drops the lock when the process dies, so ``kill -9`` never leaves it stale.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise RuntimeError(f"another online trainer holds {path}; stop it or use another state dir") from exc
    return fd


def _end_partial_line(path: Path) -> None:
    """Terminate a JSONL line cut short by a kill, so the records appended after it stay readable."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
