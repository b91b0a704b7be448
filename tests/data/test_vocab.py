import pytest
from hypothesis import given
from hypothesis import strategies as st

from seekrec.data.schema import IdMap
from seekrec.data.vocab import Vocab


@pytest.mark.slow
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


def test_catalog_round_trip_growth_and_popularity():
    from seekrec.data.vocab import Catalog

    import numpy as np

    catalog = Catalog.from_data(IdMap.fit([5, 7, 9]), np.array([1, 3, 3, 2, 3]))
    assert catalog.popular(2).tolist() == [3, 1]
    new = catalog.add("11")
    catalog.record(new, 5)
    assert new == 4 and catalog.popular(1).tolist() == [4]
    back = Catalog.from_bytes(catalog.to_bytes())
    assert back.items.decode([4]) == ["11"] and back.counts.tolist() == catalog.counts.tolist()
    with pytest.raises(ValueError, match="length"):
        Catalog(Vocab(["a"]), np.array([0]))
