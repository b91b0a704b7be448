"""API keys and roles: who may post events, ask for recommendations, add items or run admin actions.

Keys are random tokens; only their SHA-256 is stored (a keys file of ``ROLE SHA256HEX`` lines and/or the
``SEEKREC_API_KEYS`` environment variable, ``ROLE:SHA256HEX`` entries), so a leaked config leaks no key.
The file is re-read whenever it changes (mtime, size or inode), so keys rotate without a restart: add
the new key, move clients over, delete the old line. With no keys configured the server is open to
every client that can reach it, which is why ``check_bind`` lets it listen on loopback only.

Roles: ``read`` (``POST /recommend``), ``ingest`` (``POST /events``), ``metrics`` (``GET /metrics`` when
``metrics_require_key``) and ``admin`` (``POST /items``, the admin routes), which also holds the other three.
A key listed under several roles holds all of them.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request

from seekrec.serving.settings import ServeSettings

log = logging.getLogger(__name__)

ENV_VAR = "SEEKREC_API_KEYS"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Role(str, enum.Enum):
    """What a key may do; ``admin`` implies every other role."""

    READ = "read"
    INGEST = "ingest"
    METRICS = "metrics"
    ADMIN = "admin"


ROLE_NAMES = ", ".join(r.value for r in Role)


def hash_key(key: str) -> str:
    """The hex SHA-256 stored for ``key``. Keys are 256-bit random tokens (``new_key``), not passwords,
    so an unsalted fast hash cannot be brute-forced and lets a request be checked in microseconds."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def parse_role(text: str, where: str = "role") -> Role:
    """``text`` as a role; ValueError listing the roles when it is none."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ValueError(f"{where}: unknown role {text.strip()!r}; roles are {ROLE_NAMES}") from None


def _parse_hash(text: str, where: str) -> str:
    digest = text.strip().lower()
    if not _HEX64.fullmatch(digest):
        # never echo the value: it may be a plaintext key pasted by mistake
        raise ValueError(f"{where}: expected the key's SHA-256 as 64 hex digits (make one with "
                         f"`seekrec keys new ROLE` or `seekrec keys hash`), not the key itself")
    return digest


def parse_keys_file(text: str, source: str) -> list[tuple[Role, str]]:
    """``ROLE SHA256HEX`` per line; blank lines and ``#`` comments (whole-line or trailing) are ignored."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'ROLE SHA256HEX' (two fields), got {len(fields)}")
        entries.append((parse_role(fields[0], where), _parse_hash(fields[1], where)))
    return entries


def parse_keys_env(text: str) -> list[tuple[Role, str]]:
    """``ROLE:SHA256HEX`` entries separated by commas or whitespace (the ``SEEKREC_API_KEYS`` form)."""
    entries = []
    for number, entry in enumerate(re.split(r"[,\s]+", text.strip()), 1):
        if not entry:
            continue
        role, sep, digest = entry.partition(":")
        where = f"{ENV_VAR} entry {number}"
        if not sep:
            raise ValueError(f"{where}: expected ROLE:SHA256HEX, e.g. read:<64 hex digits>")
        entries.append((parse_role(role, where), _parse_hash(digest, where)))
    return entries


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    roles: frozenset[Role]


def _index(entries: list[tuple[Role, str]]) -> tuple[_Entry, ...]:
    """One entry per distinct key with every role it was listed under (admin expanded to all roles)."""
    roles: dict[str, set[Role]] = {}
    for role, digest in entries:
        roles.setdefault(digest, set()).update(set(Role) if role is Role.ADMIN else {role})
    return tuple(_Entry(bytes.fromhex(d), frozenset(r)) for d, r in roles.items())


class KeyStore:
    """The configured keys; ``enabled`` is False when none were configured (open server, loopback only).

    The file is stat-ed on each check (microseconds) and re-read when it changed; a file that became
    unreadable or invalid keeps the last good keys and logs an error, so a bad edit cannot lock every
    client out or open the server."""

    def __init__(self, file: Path | None = None, env_value: str | None = None,
                 public: frozenset[Role] = frozenset()) -> None:
        self.file = file
        self.public = public  # roles every client holds, key or not (``metrics`` unless metrics_require_key)
        self._env = parse_keys_env(env_value) if env_value else []
        self._stamp: tuple[int, int, int] | None = None
        self._entries: tuple[_Entry, ...] = _index(self._env)
        if file is not None:
            self._stamp, entries = self._read(file)  # at start a bad file is an error, not a warning
            self._entries = _index(self._env + entries)
            log.info("API keys: %s", self.summary())
        elif self._env:
            log.info("API keys: %s", self.summary())

    @classmethod
    def from_settings(cls, settings: ServeSettings, environ: Mapping[str, str] = os.environ) -> KeyStore:
        """Keys from ``settings.api_keys_file`` and the ``SEEKREC_API_KEYS`` variable of ``environ``."""
        public = frozenset() if settings.metrics_require_key else frozenset({Role.METRICS})
        return cls(settings.api_keys_file, environ.get(ENV_VAR) or None, public)

    @property
    def enabled(self) -> bool:
        return self.file is not None or bool(self._env)

    def summary(self) -> str:
        """How many keys hold each role (never the keys or their hashes), for the start-up log."""
        counts = {r.value: sum(r in e.roles for e in self._entries) for r in Role}
        source = " + ".join(filter(None, [str(self.file) if self.file else "", ENV_VAR if self._env else ""]))
        return f"{len(self._entries)} key(s) from {source} ({', '.join(f'{k}: {v}' for k, v in counts.items())})"

    @staticmethod
    def _read(file: Path) -> tuple[tuple[int, int, int], list[tuple[Role, str]]]:
        try:
            st = os.stat(file)
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the API keys file {file}: {exc.strerror or exc}; create it with "
                             f"lines of 'ROLE SHA256HEX' (`seekrec keys new ROLE` prints one)") from exc
        return (st.st_mtime_ns, st.st_size, st.st_ino), parse_keys_file(text, str(file))

    def _refresh(self) -> None:
        if self.file is None:
            return
        try:
            st = os.stat(self.file)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            stamp, entries = self._read(self.file)
        except ValueError as exc:
            log.error("API keys file changed but cannot be used, keeping the previous keys: %s", exc)
            return
        self._stamp, self._entries = stamp, _index(self._env + entries)
        log.info("API keys reloaded: %s", self.summary())

    def count(self, role: Role) -> int:
        """How many configured keys hold ``role`` (admin keys hold every role)."""
        self._refresh()
        return sum(role in entry.roles for entry in self._entries)

    def roles(self, key: str) -> frozenset[Role] | None:
        """The roles of ``key``; None when no configured key matches."""
        self._refresh()
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found: frozenset[Role] | None = None
        for entry in self._entries:  # every entry is compared, so timing does not tell which one matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry.roles
        return found


def presented_key(request: Request) -> str | None:
    """The key from ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; None when neither is sent."""
    return key_in_headers(request.headers)


def key_in_headers(headers: Mapping[str, str]) -> str | None:
    """``presented_key`` for code below the router (ASGI middleware) that has headers, not a request."""
    header = headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return headers.get("x-api-key") or None


def require(role: Role) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that lets a request through only with a key holding ``role``: 401 without a
    valid key, 403 with a valid key that lacks the role. Open when no keys are configured."""

    async def check(request: Request) -> None:  # async: no thread-pool hop per request
        keys: KeyStore = request.app.state.keys  # set by create_app; absent is a bug, not an open door
        if not keys.enabled or role in keys.public:
            return
        key = presented_key(request)
        roles = keys.roles(key) if key is not None else None
        if roles is None:
            what = "no API key" if key is None else "an unknown API key"
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"},
                                detail=f"{what}: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
                                       f"with a key holding the {role.value!r} role")
        if role not in roles:
            raise HTTPException(status_code=403, detail=f"this API key lacks the {role.value!r} role "
                                                         f"(it holds: {', '.join(sorted(r.value for r in roles))})")

    return check


def require_configured(role: Role) -> Callable[[Request], Awaitable[None]]:
    """``require(role)`` for actions an open server must not offer: 403 unless some configured key holds
    ``role``. The web console's admin buttons use it, so a page anyone on the host can open cannot promote a
    model or roll back an experiment on a server started without keys."""
    checked = require(role)

    async def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        if not keys.enabled or keys.count(role) == 0:
            raise HTTPException(status_code=403, detail=f"disabled: this server has no {role.value!r} key configured "
                                                         f"(start it with --api-keys-file or {ENV_VAR} holding one)")
        await checked(request)

    return check


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); false for 0.0.0.0, :: and names."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name could resolve to anything


def check_bind(host: str, keys: KeyStore) -> None:
    """Refuse to expose a server without keys beyond this machine; say at start which mode it runs in."""
    if keys.enabled:
        log.info("API keys required on %s: %s", host, keys.summary())
        return
    if not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r} without API keys: every client could post events, "
                         f"add items and read users' histories. Configure keys (--api-keys-file FILE or "
                         f"{ENV_VAR}; `seekrec keys new ROLE` makes one) or serve on 127.0.0.1")
    log.warning("no API keys configured: serving on loopback %s only, and every local client has every role "
                "(configure --api-keys-file or %s to serve other hosts)", host, ENV_VAR)
