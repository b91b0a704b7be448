"""``serving/limits.py`` on its own: token buckets and the body-size middleware, no model loaded."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from seekrec.serving.auth import KeyStore, hash_key, new_key
from seekrec.serving.limits import BodySizeLimit, RateLimit, TokenBuckets, client_key


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_then_rate() -> None:
    clock = _Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 0.5  # empty: one token in 1 / rate seconds
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now = 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0


def test_token_buckets_are_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10, clock=_Clock())
    for i in range(1000):
        buckets.take(f"client-{i}")
    assert len(buckets._buckets) == 10


def _echo_app(max_bytes: int, rate: float = 0.0) -> TestClient:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    if rate:
        app.add_middleware(RateLimit, buckets=TokenBuckets(rate, 2))
    return TestClient(app)


def test_body_over_the_limit_is_413_declared_or_chunked() -> None:
    client = _echo_app(1024)
    assert client.post("/echo", content=b"x" * 1024).json() == {"size": 1024}
    response = client.post("/echo", content=b"x" * 1025)
    assert response.status_code == 413 and "max_body_bytes = 1024" in response.json()["detail"]
    chunked = client.post("/echo", content=iter([b"x" * 600, b"x" * 600]))  # no Content-Length
    assert chunked.status_code == 413
    assert client.post("/echo", content=iter([b"x" * 300, b"x" * 300])).json() == {"size": 600}


def test_rate_limit_answers_429_with_retry_after_but_never_on_probes() -> None:
    client = _echo_app(1024, rate=0.5)
    assert [client.post("/echo", content=b"{}").status_code for _ in range(2)] == [200, 200]
    refused = client.post("/echo", content=b"{}")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert "rate_limit_per_s" in refused.json()["detail"]
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_rate_limit_buckets_follow_known_keys_not_invented_ones() -> None:
    read_key, ingest_key = new_key(), new_key()
    keys = KeyStore(env_value=f"read:{hash_key(read_key)},ingest:{hash_key(ingest_key)}")

    def scope(key: str | None) -> dict:
        headers = [] if key is None else [(b"authorization", f"Bearer {key}".encode())]
        return {"type": "http", "client": ("10.1.2.3", 5555), "headers": headers}

    assert client_key(scope(read_key), keys) != client_key(scope(ingest_key), keys)  # one bucket per key
    assert client_key(scope(read_key), keys).startswith("key:") and read_key not in client_key(scope(read_key), keys)
    # an invented key buys no fresh bucket: it shares its address's
    assert client_key(scope(new_key()), keys) == client_key(scope(None), keys) == "10.1.2.3"
    assert client_key(scope(read_key), None) == "10.1.2.3"  # no keys configured: by address
