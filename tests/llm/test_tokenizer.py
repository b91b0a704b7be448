"""The domain tokenizer: special tokens, single-token answers, byte-level coverage, save and load."""

from __future__ import annotations

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from seekrec.llm.tokenizer import BOS, EOS, PAD, UNK, answer_ids, train_tokenizer  # noqa: E402

CORPUS = ["Toy Story (1995) - Animation, Children's, Comedy", "Heat (1995) - Action, Crime, Thriller",
          "A viewer watched, oldest first:", "Café Society (1995) - Drama"] * 20


def test_special_tokens_come_first_and_nothing_is_added_on_encoding() -> None:
    tok = train_tokenizer(CORPUS, 400)
    assert [tok.convert_tokens_to_ids(t) for t in (PAD, BOS, EOS, UNK)] == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert BOS not in tok.convert_ids_to_tokens(tok.encode("Heat (1995)"))


def test_answers_are_single_tokens_even_when_the_corpus_never_says_them() -> None:
    tok = train_tokenizer(CORPUS, 400)  # no "Yes" / "No" in the corpus: merges are appended
    yes, no = answer_ids(tok)
    assert yes != no and tok.decode([yes]) == " Yes" and tok.decode([no]) == " No"
    assert tok.encode(" Answer: Yes", add_special_tokens=False)[-1] == yes
    frequent = train_tokenizer([" Yes No Yes No"] * 200 + CORPUS, 400)  # already single: nothing appended
    assert frequent.decode(list(answer_ids(frequent))) == " Yes No"


def test_byte_level_encodes_any_text_without_unknown_tokens() -> None:
    tok = train_tokenizer(CORPUS, 400)
    text = "Amélie — 映画 🎬 (2001)"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.unk_token_id not in ids and tok.decode(ids) == text


def test_training_is_deterministic() -> None:
    assert train_tokenizer(CORPUS, 400).get_vocab() == train_tokenizer(CORPUS, 400).get_vocab()


def test_save_and_load_through_auto_tokenizer(tmp_path) -> None:
    from transformers import AutoTokenizer

    tok = train_tokenizer(CORPUS, 400)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Heat (1995) - Action. Answer: Yes"
    assert loaded.encode(text) == tok.encode(text)
    assert answer_ids(loaded) == answer_ids(tok)
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)


def test_answer_ids_rejects_a_tokenizer_with_multi_token_answers() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    with pytest.raises(ValueError, match="' Yes' is 4 tokens"):
        answer_ids(PreTrainedTokenizerFast(tokenizer_object=raw))


def test_too_small_a_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_tokenizer(CORPUS, 100)
