import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekrec.data.schema import IdMap
from seekrec.data.vocab import Vocab


@given(st.lists(st.text(min_size=1, max_size=5), max_size=30))
def test_ids_are_stable_when_growing(raws):
    vocab = Vocab()
    first = [vocab.add(r) for r in raws]
    again = [vocab.add(r) for r in raws]
    assert first == again and (max(first, default=0) == len(set(raws)))
    assert vocab.decode(first) == raws
    back = Vocab.from_json(vocab.to_json())
    assert back.encode(raws).tolist() == first


def test_from_idmap_matches_offline_ids_and_unknowns_are_padding():
    idmap = IdMap.fit([30, 10, 20])
    vocab = Vocab.from_idmap(idmap)
    assert vocab.encode(["10", "20", "30", "99"]).tolist() == [1, 2, 3, 0]
    assert vocab.add("99") == 4 and "99" in vocab
    with pytest.raises(KeyError):
        vocab.decode([0])
    with pytest.raises(ValueError, match="duplicate"):
        Vocab.from_json({"raw": ["a", "a"]})
    with pytest.raises(ValueError, match="non-empty"):
        vocab.add("")
