"""The registry's pointer: which published version is current (``CURRENT``), the promotion history
that rollback walks back (``history.json``), pinned versions (``pins.json``), channels and retention.

A channel (``channels/<name>``, one line like ``CURRENT``) is a second moving pointer: an online learner
that trains on one experiment arm's traffic publishes to its own channel instead of promoting CURRENT,
and the server's arm ``channel:<name>`` follows it. Retention spares every channel's head.

Every read-modify-write of these files, and retention, runs under an exclusive ``flock`` on
``root/.lock``; ``CURRENT`` is replaced with tempfile + ``os.replace`` so a server polling it every
second reads the old version or the new one, never a partial line.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from seekrec.io import atomic_write_bytes, atomic_write_json, exclusive_lock
from seekrec.registry.artifacts import RegistryError, parse_channel, parse_version
from seekrec.registry.store import VersionStore, utc_now

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
CHANNELS_DIR = "channels"
PINS_FILE = "pins.json"
HISTORY_FILE = "history.json"
LOCK_FILE = ".lock"
MAX_STACK = 100  # promotions remembered for rollback; history.json stays small under frequent publishing
MAX_EVENTS = 1000


class VersionPointer:
    """CURRENT, rollback history, pins and retention over the versions of ``store``; after each
    publish the newest ``keep`` versions are kept, plus the current version, the rollback target and
    pinned versions whatever their age."""

    def __init__(self, store: VersionStore, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.store, self.keep, self.root = store, keep, store.root

    def current(self) -> str | None:
        """The promoted version, or None. Reads one small file, so servers may poll it every second."""
        return _read_pointer(self.root / CURRENT_FILE, "promote a version to rewrite it")

    def channel(self, name: str) -> str | None:
        """The head of channel ``name``, or None before its first publish. One small file, like CURRENT."""
        return _read_pointer(self.root / CHANNELS_DIR / parse_channel(name), "publish to the channel again to rewrite it")

    def channels(self) -> dict[str, str]:
        """Every channel and its head."""
        folder = self.root / CHANNELS_DIR
        if not folder.is_dir():
            return {}
        heads = {path.name: self.channel(path.name) for path in sorted(folder.iterdir())
                 if path.is_file() and not path.name.startswith(".")}
        return {name: head for name, head in heads.items() if head is not None}

    def set_channel(self, name: str, version: str) -> None:
        """Point channel ``name`` at a published ``version`` (CURRENT and the rollback history are untouched)."""
        name = parse_channel(name)
        with self.locked():
            if not self.store.exists(version):
                raise RegistryError(f"cannot move channel {name!r} to {version}: it is not published in {self.root}")
            (self.root / CHANNELS_DIR).mkdir(exist_ok=True)
            atomic_write_bytes(self.root / CHANNELS_DIR / name, f"{version}\n".encode())
        log.info("channel %s -> %s in %s", name, version, self.root)

    def rollback_target(self) -> str | None:
        """The version :meth:`rollback` would switch to (the one current before the present one)."""
        stack = self._stack(self._read_history())
        return stack[-2] if len(stack) >= 2 else None

    def promote(self, version: str, action: str = "promote") -> None:
        """Make a published ``version`` current (a no-op when it already is); no checksum work here."""
        with self.locked():
            if not self.store.exists(version):
                raise RegistryError(f"cannot {action} {version}: it is not published in {self.root}")
            history = self._read_history()
            stack = self._stack(history)
            if stack and stack[-1] == version:
                return
            self._write_pointer(version, [*stack, version], history, action)
        log.info("%s %s: now current in %s", action, version, self.root)

    def rollback(self) -> str:
        """Switch CURRENT back to the version that was current before the present one; returns it.

        Repeated rollbacks walk further back through the promotion history.
        """
        with self.locked():
            history = self._read_history()
            stack = self._stack(history)
            if len(stack) < 2:
                why = "no version was ever promoted" if not stack else f"{stack[-1]} is the first promoted version"
                raise RegistryError(f"nothing to roll back to in {self.root}: {why}")
            target = stack[-2]
            if not self.store.exists(target):
                raise RegistryError(f"rollback target {target} no longer exists in {self.root} (deleted by retention "
                                    "or by hand); promote an existing version instead")
            self.store.verify(target)
            self._write_pointer(target, stack[:-1], history, "rollback")
        log.info("rolled back %s to %s", stack[-1], target)
        return target

    def pins(self) -> dict[str, str]:
        """Pinned versions and why they were pinned."""
        path = self.root / PINS_FILE
        if not path.exists():
            return {}
        try:
            return dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path}: not a JSON object of pinned versions ({exc}); fix or delete it") from exc

    def pin(self, version: str, reason: str = "") -> None:
        """Protect a published ``version`` from retention."""
        self.store.manifest(version)  # unknown versions are an error
        with self.locked():
            pins = self.pins()
            pins[version] = reason
            atomic_write_json(self.root / PINS_FILE, pins)

    def unpin(self, version: str) -> None:
        """Let retention delete ``version`` again (a no-op when it was not pinned)."""
        with self.locked():
            pins = self.pins()
            if pins.pop(version, None) is not None:
                atomic_write_json(self.root / PINS_FILE, pins)

    def retain(self) -> None:
        """Delete all but the newest ``keep`` versions, sparing the current one, the rollback target,
        channel heads and pinned versions."""
        with self.locked():
            names = self.store.published()
            stack = self._stack(self._read_history())
            protected = set(names[-self.keep :]) | set(stack[-2:]) | set(self.pins()) | set(self.channels().values())
            for name in names:
                if name not in protected:
                    self.store.discard(name)
                    log.info("retention: deleted %s", name)

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive ``flock`` on ``root/.lock``: CURRENT + history read-modify-writes and retention."""
        return exclusive_lock(self.root / LOCK_FILE)

    def _read_history(self) -> dict[str, Any]:
        path = self.root / HISTORY_FILE
        if not path.exists():
            return {"stack": [], "events": []}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable ({exc}); delete it to reset the rollback history") from exc

    def _stack(self, history: dict[str, Any]) -> list[str]:
        """The promotion stack, reconciled with CURRENT: CURRENT is written first, so after a crash
        between the two writes (or a hand edit) CURRENT wins and is pushed on top."""
        stack, current = list(history["stack"]), self.current()
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)
        return stack

    def _write_pointer(self, version: str, stack: list[str], history: dict[str, Any], action: str) -> None:
        atomic_write_bytes(self.root / CURRENT_FILE, f"{version}\n".encode())
        events = [*history["events"], {"at": utc_now(), "action": action, "version": version}]
        atomic_write_json(self.root / HISTORY_FILE, {"stack": stack[-MAX_STACK:], "events": events[-MAX_EVENTS:]})


def _read_pointer(path: Path, fix: str) -> str | None:
    """The version a one-line pointer file names (None when the file does not exist); ``fix`` says how to
    repair a garbled one."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        return parse_version(text)
    except RegistryError as exc:
        raise RegistryError(f"{path}: {exc}; {fix}") from exc
