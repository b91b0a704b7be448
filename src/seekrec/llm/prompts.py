"""Prompts: a user's history and a candidate item as text and token ids, built in one place.

Training, evaluation and serving all call ``PromptBuilder``, so a model never sees a prompt at serving
time that was made differently from the ones it learnt on. A prompt is a *prefix* (``<s>``, a header
and the most recent history items, one line each, oldest first) followed by a *candidate segment* (the
question about one item, ending with the answer cue the model answers " Yes" or " No" after)::

    <s>A viewer watched, oldest first:
    - Toy Story (1995) - Animation, Children's, Comedy; rated 4; 3 days ago
    - Heat (1995) - Action, Crime, Thriller; rated 5; yesterday
    Next: GoldenEye (1995) - Action, Adventure, Thriller. Watch it? Answer:

The prefix is identical for every candidate of a request (its budget is ``token_budget`` minus the
longest candidate segment in the catalogue), so a ranker runs it once and scores all candidates over
its cached keys and values. Items are tokenised once each, at construction: building a prompt is list
concatenation. Every piece of text starts with the separator that ends the previous one (``"\\n"``,
``";"``), which is a pre-token boundary of byte-level BPE, so for such tokenizers the concatenated
ids equal the ids of the concatenated text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from seekrec.data.schema import InteractionData

HISTORY_FIELDS = ("title", "year", "genres", "rating", "recency")
ITEM_FIELDS = ("title", "year", "genres")
DAY = 86_400


@dataclass(frozen=True)
class History:
    """One user's visible history, oldest first, and optionally what a prompt may say about it.

    ``values`` (ratings / event values) and ``timestamps`` + ``now`` are needed only when the prompt
    config renders "rating" or "recency". An empty history is a cold user: the prompt says so.
    """

    items: np.ndarray  # [H] dataset item ids (1..N)
    values: np.ndarray | None = None  # [H] ratings / event values
    timestamps: np.ndarray | None = None  # [H] unix seconds
    now: int | None = None  # request time, for recency ("2 days ago")

    def __post_init__(self) -> None:
        items = np.asarray(self.items)
        if items.ndim != 1:
            raise ValueError(f"History.items must be one-dimensional, got shape {items.shape}")
        for name in ("values", "timestamps"):
            other = getattr(self, name)
            if other is not None and np.shape(other) != items.shape:
                raise ValueError(f"History.{name} has shape {np.shape(other)}; it must match items {items.shape}")

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class PromptConfig:
    """TOML ``[prompt]``: what a prompt shows and how long it may be."""

    max_history: int = 20  # at most this many most recent items are rendered
    # the whole prompt (prefix + the longest candidate segment) in tokens; the OLDEST history items
    # are dropped first to fit
    token_budget: int = 320
    # what each history line shows: "title" (required), "year", "genres", and optionally "rating"
    # (needs History.values) and "recency" (needs History.timestamps and History.now)
    history_fields: tuple[str, ...] = ("title", "year", "genres")
    header: str = "A viewer watched, oldest first:"
    question: str = "Next: {item}. Watch it?"  # the candidate segment; {item} is the item's text
    answer_cue: str = " Answer:"  # ends the candidate segment: the model answers " Yes" / " No" after it
    empty_history: str = "- nothing yet"  # the one history line of a cold user (empty history)

    def __post_init__(self) -> None:
        self.history_fields = tuple(self.history_fields)
        unknown = [f for f in self.history_fields if f not in HISTORY_FIELDS]
        if unknown:
            raise ValueError(f"prompt.history_fields: unknown field {unknown[0]!r}; choose from {HISTORY_FIELDS}")
        if "title" not in self.history_fields:
            raise ValueError("prompt.history_fields must include 'title'")
        if len(set(self.history_fields)) != len(self.history_fields):
            raise ValueError(f"prompt.history_fields lists a field twice: {self.history_fields}")
        if self.max_history < 1:
            raise ValueError(f"prompt.max_history must be >= 1, got {self.max_history}")
        if self.token_budget < 1:
            raise ValueError(f"prompt.token_budget must be >= 1, got {self.token_budget}")
        if "{item}" not in self.question:
            raise ValueError(f"prompt.question must contain '{{item}}' (the candidate's text), got {self.question!r}")
        try:
            self.question.format(item="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt.question {self.question!r} may hold only the field {{item}}: {exc}") from exc

    @property
    def item_fields(self) -> tuple[str, ...]:
        """The fields of the item itself (no rating / recency): what candidate segments show."""
        return tuple(f for f in self.history_fields if f in ITEM_FIELDS)

    @property
    def needs_context(self) -> tuple[str, ...]:
        """The history fields that need more than item ids ("rating", "recency"): serving refuses them."""
        return tuple(f for f in self.history_fields if f in ("rating", "recency"))


class ItemTexts:
    """Item id -> its text ("Toy Story (1995) - Animation, Children's, Comedy"), from the items table.

    Title, year and genres come from ``InteractionData.items``; a missing year or empty genres are
    left out, an empty title reads "untitled". Index 0 (padding) has no text.
    """

    def __init__(self, titles: list[str], years: list[int | None], genres: list[list[str]]) -> None:
        if not len(titles) == len(years) == len(genres):
            raise ValueError(f"titles, years and genres must align: {len(titles)}, {len(years)}, {len(genres)}")
        self.titles = [t.strip() if t and t.strip() else "untitled" for t in titles]  # [N], item i at i - 1
        self.years = list(years)
        self.genres = [list(g or []) for g in genres]

    @classmethod
    def from_data(cls, data: InteractionData) -> ItemTexts:
        """The texts of every item of ``data``, in item id order 1..N."""
        table = data.items.sort_by("item_id")
        ids = table.column("item_id").to_numpy()
        if not np.array_equal(ids, np.arange(1, data.n_items + 1)):
            raise ValueError(f"{data.source}: the items table must have one row per item id 1..{data.n_items}")
        return cls(table.column("title").to_pylist(), table.column("year").to_pylist(),
                   table.column("genres").to_pylist())

    @property
    def n_items(self) -> int:
        return len(self.titles)

    def check(self, item: int) -> int:
        """``item`` as an int; ``ValueError`` unless it is a catalogue id 1..N."""
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ValueError(f"item id must be an integer, got {item!r}")
        if not 1 <= item <= self.n_items:
            raise ValueError(f"unknown item id {int(item)}: the catalogue has ids 1..{self.n_items}")
        return int(item)

    def text(self, item: int, fields: tuple[str, ...] = ITEM_FIELDS) -> str:
        """The item's text with ``fields`` (a subset of title, year, genres; others are ignored)."""
        i = self.check(item) - 1
        text = self.titles[i] if "title" in fields else ""
        if "year" in fields and self.years[i] is not None:
            text = f"{text} ({self.years[i]})"
        if "genres" in fields and self.genres[i]:
            text = f"{text} - {', '.join(self.genres[i])}"
        return text


class PromptBuilder:
    """The ONE place prompts are made: training, evaluation and serving all call it.

    ``tokenizer`` is any Hugging Face tokenizer (called with ``add_special_tokens=False``; its
    ``bos_token_id``, when it has one, starts every prefix). Construction tokenises every item once
    (history line and candidate segment) and raises ``ValueError`` when ``token_budget`` cannot hold
    the header, the longest history line and the longest candidate segment together.
    """

    def __init__(self, tokenizer: Any, items: ItemTexts, config: PromptConfig) -> None:
        self.tokenizer = tokenizer
        self.items = items
        self.config = config
        fields = config.item_fields
        self._line_texts = [line_text(items, config, i) for i in range(1, items.n_items + 1)]
        self._candidate_texts = ["\n" + config.question.format(item=items.text(i, fields)) + config.answer_cue
                                 for i in range(1, items.n_items + 1)]
        self._line_ids = self._encode_many(self._line_texts)  # [N] per-item history line ids
        self._candidate_ids = self._encode_many(self._candidate_texts)  # [N] per-item candidate ids
        self._extra_ids: dict[str, list[int]] = {}  # "; rated 4", "; 3 days ago" -> ids, filled on use
        bos = getattr(tokenizer, "bos_token_id", None)
        self._bos = [int(bos)] if bos is not None else []
        self._header_ids = self._bos + self._encode(config.header)
        self._empty_ids = self._encode("\n" + config.empty_history)
        self.max_candidate_tokens = max(len(ids) for ids in self._candidate_ids)
        self.prefix_budget = config.token_budget - self.max_candidate_tokens  # tokens the prefix may take
        longest_line = max(max(len(ids) for ids in self._line_ids), len(self._empty_ids))
        need = len(self._header_ids) + longest_line + self.max_candidate_tokens
        if config.token_budget < need:
            raise ValueError(
                f"prompt.token_budget={config.token_budget} is too small: the header takes {len(self._header_ids)} "
                f"tokens, the longest history line {longest_line} and the longest candidate segment "
                f"{self.max_candidate_tokens}; set prompt.token_budget to at least {need}")

    # -- token ids -------------------------------------------------------------------------------

    def prefix_ids(self, history: History, *, budget: int | None = None) -> list[int]:
        """``<s>`` + header + the most recent history lines (at most ``max_history``) that fit
        ``budget`` tokens (default ``prefix_budget``), oldest first.

        Identical for every candidate of a request. An empty history renders the ``empty_history``
        line (a cold user). ``ValueError`` for an unknown item id, missing values/timestamps the config
        needs, or a most recent line (with its rating/recency) that alone exceeds the budget.
        """
        return [t for segment in self._prefix_segments(history, budget) for t in segment[1]]

    def candidate_ids(self, item: int) -> list[int]:
        """The candidate segment (question + answer cue) of ``item``; cached, do not mutate."""
        return self._candidate_ids[self.items.check(item) - 1]

    def pair_ids(self, history: History, item: int) -> list[int]:
        """``prefix_ids(history) + candidate_ids(item)``: one whole prompt, at most ``token_budget`` ids."""
        return self.prefix_ids(history) + self.candidate_ids(item)

    def document_ids(self, history: History, *, eos: bool = True) -> list[int]:
        """The WHOLE history (no budget, no ``max_history``) as one text for language-model pretraining:
        ``<s>`` + header + every line, oldest first (+ ``</s>``). Same lines as prompts, so pretraining
        reads the text the rankers later see."""
        ids = list(self._header_ids)
        for _, (_, line) in self._lines(history, range(len(history))):
            ids += line
        if len(history) == 0:
            ids += self._empty_ids
        eos_id = getattr(self.tokenizer, "eos_token_id", None)
        return ids + ([int(eos_id)] if eos and eos_id is not None else [])

    def line_ids(self, item: int) -> list[int]:
        """The history line of ``item`` without rating or recency ("\\n- Toy Story (1995) - ..."); cached."""
        return self._line_ids[self.items.check(item) - 1]

    # -- text (for cross-encoders, which tokenise a text pair themselves) --------------------------

    def prefix_text(self, history: History, *, budget: int | None = None) -> str:
        """The text of ``prefix_ids`` (same items, same budget counted in this tokenizer's tokens),
        without ``<s>``."""
        return "".join(text for text, _ in self._prefix_segments(history, budget)).lstrip("\n")

    def candidate_text(self, item: int) -> str:
        """The text of ``candidate_ids(item)`` (without its leading newline)."""
        return self._candidate_texts[self.items.check(item) - 1].lstrip("\n")

    # -- internals -------------------------------------------------------------------------------

    def _prefix_segments(self, history: History, budget: int | None) -> list[tuple[str, list[int]]]:
        """``(text, ids)`` pieces of the prefix: header, then the kept lines oldest first."""
        header = (self.config.header, self._header_ids)
        n = len(history)
        if n == 0:
            return [header, ("\n" + self.config.empty_history, self._empty_ids)]
        left = (self.prefix_budget if budget is None else budget) - len(self._header_ids)
        kept: list[tuple[str, list[int]]] = []
        for position, line in self._lines(history, range(n - 1, max(n - self.config.max_history, 0) - 1, -1)):
            if len(line[1]) > left:
                if not kept:
                    raise ValueError(
                        f"the most recent history item {int(history.items[position])} takes {len(line[1])} tokens "
                        f"with its details but only {max(left, 0)} fit in the prefix budget "
                        f"({self.prefix_budget if budget is None else budget} tokens, prompt.token_budget="
                        f"{self.config.token_budget}); raise the budget or drop 'rating'/'recency' from "
                        "prompt.history_fields")
                break
            kept.append(line)
            left -= len(line[1])
        return [header, *reversed(kept)]

    def _lines(self, history: History, positions: range) -> Any:
        """Yield ``(position, (text, ids))`` for the history lines at ``positions``, in that order."""
        check_context(self.config, history)
        for position in positions:
            item = self.items.check(history.items[position])
            text, ids = self._line_texts[item - 1], self._line_ids[item - 1]
            for extra in line_extras(self.config, history, position):
                text, ids = text + extra, ids + self._extra(extra)
            yield position, (text, ids)

    def _extra(self, text: str) -> list[int]:
        ids = self._extra_ids.get(text)
        if ids is None:
            ids = self._extra_ids[text] = self._encode(text)
        return ids

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def line_text(items: ItemTexts, config: PromptConfig, item: int) -> str:
    """The history line of ``item`` without rating or recency: ``"\\n- Toy Story (1995) - ..."``."""
    return "\n- " + items.text(item, config.item_fields)


def line_extras(config: PromptConfig, history: History, position: int) -> list[str]:
    """What follows the item on its line: ``"; rated 4"``, ``"; 3 days ago"`` as the config asks."""
    extras = []
    if "rating" in config.history_fields:
        extras.append(f"; rated {float(history.values[position]):g}")  # type: ignore[index]
    if "recency" in config.history_fields:
        ago = int(history.now) - int(history.timestamps[position])  # type: ignore[arg-type, index]
        extras.append("; " + recency_text(ago))
    return extras


def check_context(config: PromptConfig, history: History) -> None:
    """``ValueError`` when the config renders ratings or recency the history cannot supply."""
    if "rating" in config.history_fields and history.values is None:
        raise ValueError("prompt.history_fields has 'rating' but the history has no values; pass "
                         "History(values=...) or drop 'rating'")
    if "recency" in config.history_fields and (history.timestamps is None or history.now is None):
        raise ValueError("prompt.history_fields has 'recency' but the history lacks timestamps or now; pass "
                         "History(timestamps=..., now=...) or drop 'recency'")


def document_text(items: ItemTexts, config: PromptConfig, history: History) -> str:
    """The text of ``PromptBuilder.document_ids`` without ``<s>`` / ``</s>``, made without a tokenizer:
    the text a domain tokenizer is trained on before any ``PromptBuilder`` exists."""
    check_context(config, history)
    lines = [line_text(items, config, items.check(history.items[p])) + "".join(line_extras(config, history, p))
             for p in range(len(history))]
    return config.header + ("".join(lines) if lines else "\n" + config.empty_history)


def recency_text(seconds: int) -> str:
    """How long ago an event was, in words: "today", "yesterday", "3 days ago", "2 weeks ago",
    "5 months ago", "2 years ago". Events stamped after ``now`` (clock skew) read "today"."""
    days = max(seconds, 0) // DAY
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days < 14:
        return f"{days} days ago"
    if days < 61:
        return f"{days // 7} weeks ago"
    if days < 730:
        return f"{days // 30} months ago"
    return f"{days // 365} years ago"
