"""Request limits enforced before a request reaches a route: body size (413) and per-client rate (429).

Both are plain ASGI middleware so a refused request costs no JSON parsing and no pydantic model: a
5 MB body or a client looping as fast as it can is turned away for the price of reading headers.
Which client a request belongs to is one function (``client_key``): the API key it presents when the
server knows that key, else its client address (so inventing keys buys no fresh buckets).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seekrec.serving.auth import KeyStore, hash_key, key_in_headers

# routes a probe or a scraper must always reach, whatever a client did
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_CLIENTS = 100_000  # token buckets kept; the least recently seen client beyond it starts afresh


def client_key(scope: Scope, keys: KeyStore | None = None) -> str:
    """The rate-limit bucket of a request: ``key:<hash prefix>`` for a key ``keys`` accepts, else the
    client address (the host; ports change per connection)."""
    if keys is not None and keys.enabled:
        key = key_in_headers(Headers(scope=scope))
        if key is not None and keys.roles(key):
            return "key:" + hash_key(key)[:16]
    client = scope.get("client")
    return client[0] if client else "unknown"


class BodySizeLimit:
    """Refuses bodies over ``max_bytes`` with 413: at once when ``Content-Length`` says so, otherwise
    (chunked bodies) as soon as the bytes read pass the limit, before the route parses anything."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.max_bytes, self._on_reject = app, max_bytes, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, f"{int(declared)} bytes")
            return
        if declared is not None:  # the server stops at Content-Length: the declared size is the size
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the route sees the disconnect
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send, f"more than {self.max_bytes} bytes")
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        if self._on_reject is not None:
            self._on_reject("body_too_large")
        detail = f"request body of {size} is over the limit max_body_bytes = {self.max_bytes}"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class TokenBuckets:
    """A token bucket per key: ``burst`` requests at once, refilled at ``rate`` per second.

    Buckets are kept for the ``max_keys`` most recently seen keys, so clients that invent addresses
    cannot grow memory; a forgotten key starts with a full bucket, which is what a new client gets anyway.
    """

    def __init__(self, rate: float, burst: int, max_keys: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst, self.max_keys, self._clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, time)

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 when granted, else the seconds until one is available."""
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait


class RateLimit:
    """Answers 429 with ``Retry-After`` (whole seconds) to a client whose bucket is empty."""

    def __init__(self, app: ASGIApp, buckets: TokenBuckets, key: Callable[[Scope], str] = client_key,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.buckets, self.key, self._on_reject = app, buckets, key, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.key(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        if self._on_reject is not None:
            self._on_reject("rate_limited")
        detail = (f"rate limit: {self.buckets.rate:g} requests/s per client with a burst of {self.buckets.burst} "
                  f"(rate_limit_per_s, rate_limit_burst); retry in {wait:.2f} s")
        response = JSONResponse({"detail": detail}, status_code=429,
                                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        await response(scope, receive, send)
