"""Tiny shared fixtures for the model tests: configs, padding, a synthetic task, a table model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seekrec.models.layers.context import SequenceContext
from seekrec.models.layers.similarity import Similarity
from seekrec.models.factory import build_model
from seekrec.models.task import NextItemBatch

N_ITEMS = 30
MAX_LEN = 16
MODEL_NAMES = ("sasrec", "deepseek")
TINY: dict[str, dict[str, Any]] = {
    "sasrec": {"dim": 32, "n_layers": 2, "n_heads": 2, "max_len": MAX_LEN, "dropout": 0.1},
    "deepseek": {
        "dim": 32,
        "n_layers": 2,
        "n_heads": 2,
        "max_len": MAX_LEN,
        "dropout": 0.1,
        "q_lora_rank": 16,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 8,
        "v_head_dim": 8,
        "ffn_dim": 64,
        "moe_ffn_dim": 32,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "top_k": 2,
    },
}


def make_model(name: str, seed: int = 0, **overrides: Any) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, {**TINY[name], **overrides}, N_ITEMS)


def left_pad(rows: list[list[int]], length: int) -> Tensor:
    """``[B, length]`` LongTensor with each row right-aligned (left padding with 0)."""
    out = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, length - len(row) :] = torch.tensor(row)
    return out


def successor_batch(batch_size: int, length: int, seed: int) -> NextItemBatch:
    """Sequences where the next item is ``item % N + 1``, with random lengths and left padding."""
    g = torch.Generator().manual_seed(seed)
    rows, targets = [], []
    for _ in range(batch_size):
        n = int(torch.randint(2, length + 1, (1,), generator=g))
        start = int(torch.randint(1, N_ITEMS + 1, (1,), generator=g))
        items = [(start - 1 + k) % N_ITEMS + 1 for k in range(n + 1)]
        rows.append(items[:-1])
        targets.append(items[1:])
    return NextItemBatch(left_pad(rows, length), left_pad(targets, length))


FLAGS = ("time_features", "action_features", "relative_position_bias", "relative_time_bias")
ALL_FLAGS = dict.fromkeys(FLAGS, True)


def with_context(rows: list[list[int]], length: int, seed: int = 0) -> tuple[torch.Tensor, SequenceContext]:
    """``left_pad(rows, length)`` and a context for it: increasing random times with gaps from seconds to
    weeks, query time = the next event's time (a later one for the last), ratings 1..5; 0 at padding."""
    g = torch.Generator().manual_seed(seed)
    times, queries, values = [], [], []
    for row in rows:
        gaps = (2.0 ** torch.randint(0, 21, (len(row) + 1,), generator=g)).long()
        stamps = (1_000_000_000 + gaps.cumsum(0)).tolist()
        times.append(stamps[:-1])
        queries.append(stamps[1:])
        values.append(torch.randint(1, 6, (len(row),), generator=g).tolist())
    floats = left_pad(values, length).float()
    return left_pad(rows, length), SequenceContext(left_pad(times, length), left_pad(queries, length), floats)


class TableModel(nn.Module):
    """Minimal ``SequenceRecommender`` stand-in for loss tests: hidden states are given directly."""

    def __init__(self, n_items: int, dim: int, similarity: str = "dot", temperature: float = 0.1) -> None:
        super().__init__()
        self.n_items = n_items
        self.table = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.similarity = Similarity(similarity, temperature)

    def encode_items(self, ids: Tensor) -> Tensor:
        return self.table(ids)
