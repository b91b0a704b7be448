"""Test helpers for features: a seeded MovieLens-like dataset with missing values, batch comparison."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from seekrec.data.schema import IdMap, InteractionData, build_events
from seekrec.features.batch import FeatureBatch
from seekrec.features.spec import FeatureSpecConfig

T0 = 1_000_000_000
DAY = 86_400

_WORDS = ["star", "love", "night", "dark", "return", "story", "city", "war", "dream", "river", "ghost", "summer"]
_GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
_OCCUPATIONS = ["engineer", "student", "writer", "artist", "doctor", "lawyer"]


def movielens_like(n_users: int = 40, n_items: int = 30, n_events: int = 700, seed: int = 0) -> InteractionData:
    """Users with age/gender/occupation/zip and items with title/genres/year, ~10% of them missing.

    Timestamps fall on whole hours over 40 days, so many events share a time (ties matter).
    """
    rng = np.random.default_rng(seed)
    raw_users = rng.integers(100, 100 + n_users, n_events)
    popularity = 1.0 / np.arange(1, n_items + 1)
    raw_items = 1000 + rng.choice(n_items, n_events, p=popularity / popularity.sum())
    times = T0 + 3600 * rng.integers(0, 40 * 24, n_events)
    user_map, item_map = IdMap.fit(raw_users), IdMap.fit(raw_items)
    events = build_events(user_map.encode(raw_users), item_map.encode(raw_items), times, np.ones(n_events), "click")

    def maybe(values: list, p: float = 0.1) -> list:
        return [None if rng.random() < p else v for v in values]

    nu, ni = len(user_map), len(item_map)
    users = pa.table({
        "user_id": pa.array(np.arange(1, nu + 1), pa.int64()),
        "age": pa.array(maybe(rng.integers(12, 70, nu).tolist()), pa.int32()),
        "gender": pa.array(maybe(rng.choice(["M", "F"], nu).tolist()), pa.string()),
        "occupation": pa.array(maybe(rng.choice(_OCCUPATIONS, nu).tolist()), pa.string()),
        "zip": pa.array(maybe([f"{z:05d}" for z in rng.integers(0, 99999, nu)]), pa.string()),
    })
    titles = [" ".join(rng.choice(_WORDS, 2, replace=False)).title() for _ in range(ni)]
    genres = [sorted(rng.choice(_GENRES, rng.integers(0, 4), replace=False).tolist()) for _ in range(ni)]
    items = pa.table({
        "item_id": pa.array(np.arange(1, ni + 1), pa.int64()),
        "title": pa.array(maybe(titles, 0.05), pa.string()),
        "genres": pa.array(maybe(genres), pa.list_(pa.string())),
        "year": pa.array(maybe(rng.integers(1950, 2020, ni).tolist()), pa.int32()),
    })
    return InteractionData(events, items, users, user_map, item_map, "movielens-like")


def small_config(sequence_len: int = 6) -> FeatureSpecConfig:
    return FeatureSpecConfig.movielens(sequence_len=sequence_len, text_dim=8)


def assert_batches_equal(a: FeatureBatch, b: FeatureBatch) -> None:
    """Exact equality of every field (ids and floats alike)."""
    assert a.categorical.keys() == b.categorical.keys()
    for name in a.categorical:
        assert torch.equal(a.categorical[name], b.categorical[name]), name
    for name in ("dense", "text", "sequence", "recency"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
