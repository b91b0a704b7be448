"""A tiny seeded world whose item titles carry their topic's words, and the pipeline config that trains on it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seekrec.data.schema import IdMap, InteractionData, build_events
from seekrec.pipeline.config import PipelineConfig

T0 = 1_700_000_000
TOPICS = {
    "space": ["space", "galaxy", "orbit", "rocket", "planet", "star", "comet", "nebula"],
    "kitchen": ["kitchen", "recipe", "bread", "soup", "baking", "spice", "oven", "pasta"],
    "ocean": ["ocean", "reef", "whale", "tide", "coral", "harbor", "wave", "shark"],
}
NAMES = list(TOPICS)


def topic_world(n_users: int = 48, items_per_topic: int = 16, events_per_user: int = 12,
                seed: int = 0) -> InteractionData:
    """User u loves topic ``NAMES[u % 3]`` and picks its items 90% of the time; an item's title is two
    words of its topic and its genre is the topic. Every event has its own hour, oldest first."""
    rng = np.random.default_rng(seed)
    n_topics = len(NAMES)
    n_items = n_topics * items_per_topic
    topic_of_item = np.repeat(np.arange(n_topics), items_per_topic)  # item i + 1 has topic topic_of_item[i]
    users, items, times = [], [], []
    for u in range(n_users):
        own = np.flatnonzero(topic_of_item == u % n_topics) + 1
        for j in range(events_per_user):
            pick = rng.choice(own) if rng.random() < 0.9 else rng.integers(1, n_items + 1)
            users.append(u + 1)
            items.append(int(pick))
            times.append(T0 + 3600 * (u * events_per_user + j))
    user_map, item_map = IdMap.fit(np.arange(1, n_users + 1)), IdMap.fit(np.arange(1, n_items + 1))
    events = build_events(np.array(users), np.array(items), np.array(times), np.ones(len(users)), "click")
    titles = [" ".join(rng.choice(TOPICS[NAMES[t]], 2, replace=False)).title() for t in topic_of_item]
    item_table = pa.table({
        "item_id": pa.array(np.arange(1, n_items + 1), pa.int64()),
        "title": pa.array(titles, pa.string()),
        "genres": pa.array([[NAMES[t].title()] for t in topic_of_item], pa.list_(pa.string())),
        "year": pa.array(rng.integers(1990, 2020, n_items).tolist(), pa.int32()),
    })
    user_table = pa.table({
        "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
        "age": pa.array(rng.integers(18, 60, n_users).tolist(), pa.int32()),
    })
    return InteractionData(events, item_table, user_table, user_map, item_map, "topic-world")


def fans_of(topic: str, n_users: int = 48) -> np.ndarray:
    """User ids whose favourite topic is ``topic``."""
    return np.arange(1, n_users + 1)[np.arange(n_users) % len(NAMES) == NAMES.index(topic)]


def tiny_config(data_dir: str, sasrec_run: str | None = None, **overrides: str) -> PipelineConfig:
    """Small models and few epochs: the whole pipeline trains in a few seconds on a CPU."""
    values = [
        f"data.path={data_dir!s}", "features.sequence_len=8", "features.text_dim=8",
        'two_tower.model={"dim": 16, "embed_dim": 16, "hidden_dims": [32], "sequence_pooling": "mean", '
        '"id_dropout": 0.5, "dropout": 0.0}',
        "two_tower.loss.n_negatives=16", "two_tower.train.batch_size=64", "two_tower.train.lr=0.01",
        "two_tower.train.warmup_steps=5", "two_tower.train.max_epochs=40", "two_tower.train.patience=3",
        "two_tower.train.select_metric=ndcg@10", "two_tower.train.device=cpu",
        'din.model={"embed_dim": 8, "attention_hidden": [8], "hidden_dims": [16]}',
        "din.n_negatives=2", "din.eval_negatives=5", "din.train.batch_size=64", "din.train.lr=0.01",
        "din.train.warmup_steps=5", "din.train.max_epochs=8", "din.train.patience=4", "din.train.device=cpu",
        "stages.n_candidates=12", "stages.k=5",
    ]
    values += [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    if sasrec_run is not None:
        values.append(f'sasrec_run="{sasrec_run}"')
    return PipelineConfig.load(None, values)
