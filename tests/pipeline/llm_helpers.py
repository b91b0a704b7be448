"""A fine-tuned LLM run directory as `seekrec llm finetune` leaves it, with a tiny random DeepSeek-V3 inside,
a stand-in re-ranker whose preferences a test can state, and one torch thread for tiny models."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from seekrec.data.schema import InteractionData


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared machine: one intra-op thread is many times faster than several (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_llm_run(out: Path, data: InteractionData, retriever_run: Path, *,
                  history_fields: Sequence[str] = ("title", "year", "genres"), weight: float = 0.5,
                  n_candidates: int = 10, seed: int = 0, task: str = "rerank") -> Path:
    """An LLM run over ``data``'s items (``llm.json`` with weights "full", ``model/``, ``items.json``) whose
    candidates come from ``retriever_run``; the model is a random tiny DeepSeek-V3 (MLA + MoE)."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    from seekrec.llm.prompts import ItemTexts
    from seekrec.llm.rerank import FULL_DIR, LLMRunInfo, write_item_texts
    from seekrec.llm.tokenizer import train_tokenizer

    texts = ItemTexts.from_data(data)
    lines = [f"- {texts.text(i)}" for i in range(1, texts.n_items + 1)]
    tokenizer = train_tokenizer(lines * 2 + ["A viewer watched, oldest first:", "Next: x. Watch it? Answer: Yes No",
                                             "; rated 4; 3 days ago"], vocab_size=400)
    config = DeepseekV3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, n_shared_experts=1,
                              n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                              first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
                              qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=1024,
                              num_nextn_predict_layers=0, initializer_range=0.5, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2)
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    DeepseekV3ForCausalLM(config).save_pretrained(out / FULL_DIR)
    tokenizer.save_pretrained(out / FULL_DIR)
    LLMRunInfo(base_model=str(out / FULL_DIR), kind="causal", weights="full",
               prompt={"history_fields": list(history_fields), "token_budget": 400}, weight=weight,
               n_candidates=n_candidates, n_items=data.n_items, retriever_run=str(retriever_run),
               task=task).write(out)
    write_item_texts(out, texts)
    return out


class TableReranker:
    """A re-ranker that scores item ``i`` with ``table[i]`` whatever the history, and records the histories
    it was asked about."""

    def __init__(self, table: np.ndarray, n_items: int) -> None:
        self.table, self.n_items = np.asarray(table, dtype=np.float32), n_items
        self.histories: list[Any] = []

    def scores(self, history: Any, items: np.ndarray) -> np.ndarray:
        self.histories.append(history)
        return self.table[np.asarray(items, dtype=np.int64)]
