"""Prometheus metrics of the online trainer (``seekrec stream-train --metrics-port``), and the process
metrics the trainer and the server both export.

The trainer has no HTTP API of its own, so with a port set it starts prometheus-client's exposition
server in a daemon thread. Its own ``CollectorRegistry``, like the server's: tests that run two trainers
in one process must not collide on series.
"""

from __future__ import annotations

import os
import time
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server


def register_process_metrics(registry: CollectorRegistry) -> None:
    """``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds`` (and the rest of
    prometheus-client's process collector), plus ``seekrec_process_cpus``, the CPUs this process may run on,
    so that the CPU alert divides by what the process can use rather than by a guess."""
    ProcessCollector(registry=registry)
    Gauge("seekrec_process_cpus", "CPUs this process may run on (its affinity mask)",
          registry=registry).set(len(os.sched_getaffinity(0)))


class TrainerMetrics:
    """What the online trainer exports: throughput, loss, lag, position and publishing."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        register_process_metrics(r)
        self.events = Counter("seekrec_trainer_events", "Events trained on by this process", registry=r)
        self.steps = Counter("seekrec_trainer_steps", "Optimiser steps taken by this process", registry=r)
        self.loss = Gauge("seekrec_trainer_loss", "Loss of the last optimiser step", registry=r)
        self.rate = Gauge("seekrec_trainer_events_per_second", "Events per second of the last step's compute "
                          "(reading the log not counted)", registry=r)
        self.lag = Gauge("seekrec_trainer_lag", "Events in the log past the trainer's position", registry=r)
        self.position = Gauge("seekrec_trainer_position", "Offset of the last event trained on", registry=r)
        self.published = Counter("seekrec_trainer_versions_published", "Model versions published by this process",
                                 registry=r)
        self.last_publish = Gauge("seekrec_trainer_last_publish_timestamp_seconds",
                                  "Unix time of the last publish (0: none by this process yet)", registry=r)

    def stepped(self, events: int, seconds: float, record: dict[str, Any]) -> None:
        """One read of ``events`` consumed in ``seconds``; ``record``: the step's metrics-log record."""
        self.events.inc(events)
        if "loss" in record:
            self.steps.inc()
            self.loss.set(record["loss"])
        self.rate.set(events / seconds if seconds > 0 else 0.0)
        self.position.set(record["to"])
        if record.get("lag") is not None:
            self.lag.set(record["lag"])

    def publishing(self, position: int) -> None:
        """A version was published through ``position``."""
        self.published.inc()
        self.last_publish.set(time.time())
        self.position.set(position)

    def serve(self, port: int, host: str) -> WSGIServer:
        """Expose ``/metrics`` on ``host:port`` from a daemon thread; ``shutdown()`` and ``server_close()`` the
        returned server to stop it before the process ends."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server
