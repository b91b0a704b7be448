"""A byte-level BPE tokenizer trained on the domain's own text.

Byte-level, so every string encodes (accents, odd punctuation in titles) without an unknown token;
trained only on the training split, so no validation or test text leaks into the vocabulary. The
rankers read the logits of the answer tokens " Yes" and " No", so both must be single tokens: when the
trained merges do not produce them, merges are appended that join exactly their pieces (appended
merges rank last, so every other string keeps the tokenization the trainer gave it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
ANSWERS = (" Yes", " No")
MIN_VOCAB = 300  # 256 byte symbols + the special tokens + a few merges


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE on ``texts``; returns a ``transformers.PreTrainedTokenizerFast``.

    Special tokens ``<pad> <s> </s> <unk>`` get ids 0..3. The vocabulary holds ``vocab_size`` entries
    plus at most a few merges that make " Yes" and " No" single tokens (see ``answer_ids``). No special
    token is added on encoding: callers (``PromptBuilder``) place ``<s>`` / ``</s>`` themselves.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE; use at least {MIN_VOCAB}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer = _with_single_token_answers(tokenizer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK,
                                   pad_token=PAD, clean_up_tokenization_spaces=False)


def answer_ids(tokenizer: Any) -> tuple[int, int]:
    """The token ids of " Yes" and " No"; ``ValueError`` if either is not a single token."""
    ids = []
    for answer in ANSWERS:
        encoded = tokenizer.encode(answer, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"{answer!r} is {len(encoded)} tokens in this tokenizer ({encoded}); the ranker reads "
                             f"one logit per answer: use a tokenizer where {ANSWERS} are single tokens "
                             f"(llm.tokenizer.train_tokenizer guarantees it)")
        ids.append(int(encoded[0]))
    return ids[0], ids[1]


def _with_single_token_answers(tokenizer: Any) -> Any:
    """Append BPE merges so that each answer string encodes to one token (a no-op when it already does)."""
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges: list = state["model"]["merges"]
    pair_lists = not merges or isinstance(merges[0], list)  # the serialised form changed across versions
    changed = False
    for answer in ANSWERS:
        pieces = tokenizer.encode(answer).tokens
        while len(pieces) > 1:  # join left to right: after every trained merge these are the only ones left
            joined = pieces[0] + pieces[1]
            merges.append([pieces[0], pieces[1]] if pair_lists else f"{pieces[0]} {pieces[1]}")
            if joined not in vocab:
                vocab[joined] = max(vocab.values()) + 1
            pieces = [joined, *pieces[2:]]
            changed = True
    if not changed:
        return tokenizer
    result = Tokenizer.from_str(json.dumps(state))
    for answer in ANSWERS:
        if len(result.encode(answer).ids) != 1:
            raise RuntimeError(f"could not make {answer!r} a single token")  # a bug here, not a user error
    return result
