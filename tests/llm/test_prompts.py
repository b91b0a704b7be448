"""Prompts: item texts, the token budget (oldest history dropped first), a prefix shared by all candidates,
ids equal to the tokenised text, cold users and every error; on the real ml-100k items and tiny tables."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from seekrec.config import from_table  # noqa: E402
from seekrec.data.schema import IdMap, InteractionData, build_events  # noqa: E402
from seekrec.llm.prompts import (  # noqa: E402
    DAY,
    History,
    ItemTexts,
    PromptBuilder,
    PromptConfig,
    document_text,
    recency_text,
)
from seekrec.llm.tokenizer import train_tokenizer  # noqa: E402

ALL_FIELDS = ("title", "year", "genres", "rating", "recency")


@pytest.fixture(scope="module")
def ml100k(ml100k_raw):
    from seekrec.data.movielens import load_movielens

    data = load_movielens("ml-100k", ml100k_raw)
    items = ItemTexts.from_data(data)
    tokenizer = train_tokenizer([items.text(i) for i in range(1, items.n_items + 1)], 600)
    return data, items, tokenizer


@pytest.fixture(scope="module")
def tiny():
    items = ItemTexts(["Alpha", "Beta Gamma", "", "Delta"], [1990, None, 2001, 1975],
                      [["Drama"], ["Comedy", "Horror"], [], []])
    tokenizer = train_tokenizer([items.text(i) for i in range(1, 5)] * 10 + ["A viewer watched, oldest first:"], 320)
    return items, tokenizer


def history(n: int, first: int = 1, **kwargs) -> History:
    return History(np.arange(first, first + n), **kwargs)


def test_item_texts_from_ml100k(ml100k) -> None:
    data, items, _ = ml100k
    assert items.n_items == data.n_items == 1682
    toy = int(data.item_ids.encode([1])[0])
    assert items.text(toy) == "Toy Story (1995) - Animation, Children's, Comedy"
    assert items.text(toy, ("title",)) == "Toy Story"
    assert items.text(toy, ("title", "genres")) == "Toy Story - Animation, Children's, Comedy"


def test_item_texts_from_a_tiny_table_leave_out_what_is_missing() -> None:
    users, raw_items = IdMap.fit([1]), IdMap.fit([10, 20, 30])
    events = build_events(np.array([1, 1, 1]), np.array([1, 2, 3]), np.array([1, 2, 3]), np.ones(3), "click")
    table = pa.table({"item_id": pa.array([3, 1, 2], pa.int64()),  # any row order
                      "title": pa.array(["Gamma", "Alpha", ""], pa.string()),
                      "genres": pa.array([["Drama", "War"], [], ["Comedy"]], pa.list_(pa.string())),
                      "year": pa.array([1999, None, 2003], pa.int32())})
    data = InteractionData(events, table, pa.table({"user_id": pa.array([1], pa.int64())}), users, raw_items, "tiny")
    items = ItemTexts.from_data(data)
    assert [items.text(i) for i in (1, 2, 3)] == ["Alpha", "untitled (2003) - Comedy", "Gamma (1999) - Drama, War"]


def test_prefix_is_shared_by_every_candidate_and_prompts_fit_the_budget(ml100k) -> None:
    _, items, tokenizer = ml100k
    config = PromptConfig(token_budget=200)
    builder = PromptBuilder(tokenizer, items, config)
    longest = max(range(1, items.n_items + 1), key=lambda i: len(builder.candidate_ids(i)))
    assert len(builder.candidate_ids(longest)) == builder.max_candidate_tokens
    h = history(60, first=100)
    prefix = builder.prefix_ids(h)
    assert prefix[0] == tokenizer.bos_token_id and len(prefix) <= builder.prefix_budget
    for item in (1, 50, longest, items.n_items):
        pair = builder.pair_ids(h, item)
        assert pair[: len(prefix)] == prefix and pair[len(prefix):] == builder.candidate_ids(item)
        assert len(pair) <= config.token_budget
    assert builder.candidate_ids(7) is builder.candidate_ids(7)  # tokenised once, at construction


def test_oldest_history_is_dropped_first(ml100k) -> None:
    _, items, tokenizer = ml100k
    builder = PromptBuilder(tokenizer, items, PromptConfig(token_budget=160, max_history=50))
    h = history(50, first=200)
    text = builder.prefix_text(h)
    shown = [i for i in h.items if builder.items.text(int(i)) in text.split("\n- ")]
    assert 0 < len(shown) < 50
    assert shown == list(h.items[-len(shown):])  # a suffix: the most recent ones, oldest first
    # older items beyond what fits change nothing
    assert builder.prefix_ids(History(np.concatenate([np.arange(1, 40), h.items]))) == builder.prefix_ids(h)
    # it stopped because the next older item would not have fitted
    prefix = builder.prefix_ids(h)
    next_older = int(h.items[-len(shown) - 1])
    assert len(prefix) <= builder.prefix_budget < len(prefix) + len(builder.line_ids(next_older))


def test_an_explicit_budget_replaces_the_prompt_budget(ml100k) -> None:
    _, items, tokenizer = ml100k
    builder = PromptBuilder(tokenizer, items, PromptConfig(max_history=50))
    h = history(50, first=200)
    short = builder.prefix_ids(h, budget=100)
    assert len(short) <= 100 < len(builder.prefix_ids(h))
    assert builder.prefix_ids(h, budget=builder.prefix_budget) == builder.prefix_ids(h)
    assert tokenizer.decode(short[1:]) == builder.prefix_text(h, budget=100)


def test_max_history_caps_the_lines(ml100k) -> None:
    _, items, tokenizer = ml100k
    builder = PromptBuilder(tokenizer, items, PromptConfig(max_history=3, token_budget=1000))
    text = builder.prefix_text(history(10, first=1))
    assert text.count("\n- ") == 3 and items.text(10) in text and items.text(7) not in text


def test_ids_equal_the_tokenised_text_and_the_text_shows_the_same_items(ml100k) -> None:
    _, items, tokenizer = ml100k
    config = PromptConfig(history_fields=ALL_FIELDS, token_budget=250)
    builder = PromptBuilder(tokenizer, items, config)
    n = 30
    h = History(np.arange(300, 300 + n), values=np.linspace(1, 5, n), timestamps=np.arange(n) * 5 * DAY,
                now=(n + 1) * 5 * DAY)
    whole = builder.prefix_text(h) + "\n" + builder.candidate_text(42)
    assert tokenizer(whole, add_special_tokens=False)["input_ids"] == builder.pair_ids(h, 42)[1:]
    assert tokenizer.decode(builder.prefix_ids(h)[1:]) == builder.prefix_text(h)
    assert builder.candidate_text(42).endswith("Watch it? Answer:")


def test_rating_and_recency_lines() -> None:
    items = ItemTexts(["Alpha", "Beta"], [1990, None], [["Drama"], []])
    tokenizer = train_tokenizer(["Alpha Beta rated days ago weeks months years today"] * 5, 320)
    builder = PromptBuilder(tokenizer, items, PromptConfig(history_fields=ALL_FIELDS))
    h = History(np.array([1, 2]), values=np.array([4.0, 3.5]), timestamps=np.array([0, 9 * DAY]), now=10 * DAY)
    assert builder.prefix_text(h) == ("A viewer watched, oldest first:\n- Alpha (1990) - Drama; rated 4; 10 days ago"
                                      "\n- Beta; rated 3.5; yesterday")
    only_title = PromptBuilder(tokenizer, items, PromptConfig(history_fields=("title",)))
    assert only_title.prefix_text(h) == "A viewer watched, oldest first:\n- Alpha\n- Beta"
    assert only_title.candidate_text(1) == "Next: Alpha. Watch it? Answer:"


@pytest.mark.parametrize(("days", "text"), [(-3, "today"), (0, "today"), (1, "yesterday"), (5, "5 days ago"),
                                            (20, "2 weeks ago"), (100, "3 months ago"), (800, "2 years ago")])
def test_recency_text(days: int, text: str) -> None:
    assert recency_text(days * DAY + 100) == text


def test_a_cold_user_gets_the_header_and_the_empty_history_line(tiny) -> None:
    items, tokenizer = tiny
    builder = PromptBuilder(tokenizer, items, PromptConfig())
    cold = History(np.array([], dtype=np.int64))
    assert builder.prefix_text(cold) == "A viewer watched, oldest first:\n- nothing yet"
    assert builder.pair_ids(cold, 2)[-len(builder.candidate_ids(2)):] == builder.candidate_ids(2)
    assert tokenizer.decode(builder.document_ids(cold)) == "<s>A viewer watched, oldest first:\n- nothing yet</s>"


def test_document_ids_hold_the_whole_history(tiny) -> None:
    items, tokenizer = tiny
    builder = PromptBuilder(tokenizer, items, PromptConfig(max_history=1))
    doc = builder.document_ids(History(np.array([1, 2, 3, 4, 1])))
    assert tokenizer.decode(doc).count("\n- ") == 5 and doc[-1] == tokenizer.eos_token_id


def test_document_text_is_the_text_of_document_ids(ml100k) -> None:
    _, items, tokenizer = ml100k
    config = PromptConfig(history_fields=ALL_FIELDS)
    builder = PromptBuilder(tokenizer, items, config)
    for n in (0, 1, 40):
        h = History(np.arange(500, 500 + n), values=np.full(n, 3.0), timestamps=np.arange(n) * DAY, now=n * DAY)
        ids = builder.document_ids(h)
        assert tokenizer.decode(ids, skip_special_tokens=True) == document_text(items, config, h)
        assert tokenizer(document_text(items, config, h), add_special_tokens=False)["input_ids"] == ids[1:-1]


def test_unknown_items_are_refused(tiny) -> None:
    items, tokenizer = tiny
    builder = PromptBuilder(tokenizer, items, PromptConfig())
    for bad in (0, 5, -1):
        with pytest.raises(ValueError, match=f"unknown item id {bad}: the catalogue has ids 1..4"):
            builder.candidate_ids(bad)
        with pytest.raises(ValueError, match=f"unknown item id {bad}"):
            builder.prefix_ids(History(np.array([1, bad])))
    with pytest.raises(ValueError, match="must be an integer"):
        builder.candidate_ids(1.5)  # type: ignore[arg-type]


def test_too_small_a_budget_is_refused_with_the_minimum(tiny) -> None:
    items, tokenizer = tiny
    with pytest.raises(ValueError, match=r"token_budget=10 is too small.*at least \d+"):
        PromptBuilder(tokenizer, items, PromptConfig(token_budget=10))
    need = int(_minimum(tokenizer, items))
    PromptBuilder(tokenizer, items, PromptConfig(token_budget=need))  # the minimum it names works


def _minimum(tokenizer, items) -> str:
    try:
        PromptBuilder(tokenizer, items, PromptConfig(token_budget=10))
    except ValueError as exc:
        return str(exc).rsplit(" ", 1)[-1]
    raise AssertionError("no error")


def test_details_that_cannot_fit_even_one_line_are_refused(tiny) -> None:
    items, tokenizer = tiny
    need = int(_minimum(tokenizer, items))
    builder = PromptBuilder(tokenizer, items, PromptConfig(token_budget=need, history_fields=ALL_FIELDS))
    h = History(np.array([2]), values=np.array([4.0]), timestamps=np.array([0]), now=400 * DAY)
    with pytest.raises(ValueError, match="most recent history item 2 takes"):
        builder.prefix_ids(h)


def test_missing_values_or_times_are_refused(tiny) -> None:
    items, tokenizer = tiny
    rating = PromptBuilder(tokenizer, items, PromptConfig(history_fields=("title", "rating")))
    with pytest.raises(ValueError, match="'rating' but the history has no values"):
        rating.prefix_ids(History(np.array([1])))
    recency = PromptBuilder(tokenizer, items, PromptConfig(history_fields=("title", "recency")))
    with pytest.raises(ValueError, match="'recency' but the history lacks timestamps or now"):
        recency.prefix_ids(History(np.array([1]), timestamps=np.array([5])))
    with pytest.raises(ValueError, match="History.values has shape"):
        History(np.array([1, 2]), values=np.array([1.0]))


@pytest.mark.parametrize(("change", "message"), [
    ({"history_fields": ("title", "plot")}, "unknown field 'plot'"),
    ({"history_fields": ("year",)}, "must include 'title'"),
    ({"max_history": 0}, "max_history must be >= 1"),
    ({"question": "Watch it?"}, "must contain '{item}'"),
    ({"question": "{item} {other}"}, "may hold only the field"),
])
def test_config_errors(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        replace(PromptConfig(), **change)


def test_config_from_toml_table() -> None:
    config = from_table(PromptConfig, {"history_fields": ["title", "recency"], "token_budget": 128}, "prompt")
    assert config.history_fields == ("title", "recency") and config.needs_context == ("recency",)
    assert config.item_fields == ("title",)
