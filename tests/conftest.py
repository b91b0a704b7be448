"""Shared fixtures: the real datasets beside the repository, and tiny prepared datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seekrec.data.schema import IdMap, InteractionData, build_events

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ml100k_raw() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100K not found at {path} (the shared datasets folder beside the repository)")
    return path


def tiny_data(users: list[int], items: list[int], timestamps: list[int], source: str = "tiny") -> InteractionData:
    """An InteractionData from raw id lists, with minimal side tables."""
    user_map, item_map = IdMap.fit(users), IdMap.fit(items)
    events = build_events(user_map.encode(users), item_map.encode(items), np.asarray(timestamps), np.ones(len(users)), "click")
    n_items = len(item_map)
    item_table = pa.table({
        "item_id": pa.array(np.arange(1, n_items + 1), pa.int64()),
        "title": pa.array([f"item {i}" for i in item_map.raw], pa.string()),
        "genres": pa.array([[] for _ in range(n_items)], pa.list_(pa.string())),
        "year": pa.array([None] * n_items, pa.int32()),
    })
    user_table = pa.table({"user_id": pa.array(np.arange(1, len(user_map) + 1), pa.int64())})
    return InteractionData(events, item_table, user_table, user_map, item_map, source)


@pytest.fixture(scope="session")
def sim_data_dir(tmp_path_factory) -> Path:
    """A small simulated dataset (120 users, 80 items), prepared once per test session."""
    from seekrec.data.simulator import Simulator, SimulatorConfig

    out = tmp_path_factory.mktemp("sim")
    Simulator(SimulatorConfig(n_users=120, n_items=80, mean_events_per_user=25, seed=5)).generate().write(out)
    return out
