"""Feature fixtures: a seeded MovieLens-like dataset, a spec fitted on it, store factories for each backend.

Redis tests talk to a real server on loopback through the ``redis_url`` fixture of ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from seekrec.data.schema import InteractionData
from seekrec.data.splits import UserSequences, leave_one_out
from seekrec.features.spec import FeatureSpec
from seekrec.features.store import FeatureStore
from tests.features.helpers import movielens_like, small_config


@pytest.fixture(scope="session")
def ml_like() -> InteractionData:
    return movielens_like()


@pytest.fixture(scope="session")
def ml_like_train(ml_like: InteractionData) -> UserSequences:
    users, items, ts = ml_like.interactions()
    return leave_one_out(UserSequences.from_interactions(users, items, ts, ml_like.n_users)).train


@pytest.fixture(scope="session")
def ml_like_spec(ml_like: InteractionData, ml_like_train: UserSequences) -> FeatureSpec:
    return small_config().fit(ml_like, ml_like_train)


StoreFactory = Callable[[FeatureSpec], FeatureStore]


@pytest.fixture(params=["embedded", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Builds fresh, empty stores of one backend; Redis ones get a unique key prefix, deleted afterwards."""
    opened: list[FeatureStore] = []
    prefixes: list[str] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make(spec: FeatureSpec) -> FeatureStore:
        if request.param == "embedded":
            store = FeatureStore.embedded(spec)
        else:
            prefixes.append(f"seekrec-test:{uuid.uuid4().hex}")
            store = FeatureStore.redis(spec, url, prefix=prefixes[-1])
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    if prefixes:
        import redis

        client = redis.Redis.from_url(url)
        try:
            for prefix in prefixes:
                keys = list(client.scan_iter(match=f"{prefix}:*"))
                if keys:
                    client.delete(*keys)
        finally:
            client.close()
