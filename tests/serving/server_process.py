"""Crash-test child: ``serve()`` on a loopback port. Usage: server_process.py REGISTRY EVENT_LOG DATA_DIR PORT."""

from __future__ import annotations

import sys

from seekrec.serving.app import serve
from seekrec.serving.settings import ServeSettings

if __name__ == "__main__":
    registry, event_log, data_dir, port = sys.argv[1:5]
    serve(ServeSettings(registry=registry, event_log=event_log, data_dir=data_dir, host="127.0.0.1",  # type: ignore[arg-type]
                        port=int(port), poll_interval_s=0.2), log_level="warning")
