"""MovieLens loaders: every layout on tiny files written here, every malformed input, the real ml-100k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seekrec.data.errors import DataFormatError
from seekrec.data.movielens import (
    BASE_URL,
    ML100K_GENRES,
    RELEASES,
    find_release_dir,
    get_release,
    load_movielens,
    split_title,
)

# user, item, rating, timestamp; timestamps repeat and go backwards so sorting would be visible.
RATINGS = [(7, 20, 4.0, 300), (3, 10, 5.0, 100), (7, 10, 2.0, 100), (3, 30, 1.0, 200), (5, 20, 3.5, 100)]


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def flags(*on: int) -> str:
    return "|".join("1" if k in on else "0" for k in range(19))


def write_100k(root: Path, genre_file: bool = True) -> Path:
    write(root / "u.data", "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in RATINGS))
    write(root / "u.item", (
        f"10|Café Society (1995)|01-Jan-1995||http://imdb/10|{flags(1, 8)}\n"
        f"20|unknown|01-Jan-1997||http://imdb/20|{flags(0)}\n"
        f"40|Never Rated (1990)|01-Jan-1990||http://imdb/40|{flags(5)}\n"  # no rating: dropped
    ), encoding="latin-1")  # item 30 is rated but absent: an empty row
    write(root / "u.user", "3|24|M|technician|85711\n5|53|F|other|T8H1N\n7|33|F|writer|02138\n9|40|M|none|00000\n")
    if genre_file:
        write(root / "u.genre", "".join(f"{name}|{k}\n" for k, name in enumerate(ML100K_GENRES)) + "\n")
    return root


def write_dat(root: Path, movies_encoding: str = "latin-1") -> Path:
    write(root / "ratings.dat", "".join(f"{u}::{i}::{int(r)}::{t}\n" for u, i, r, t in RATINGS))
    write(root / "movies.dat", "10::Amélie (2001)::Comedy|Romance\n20::Star Wars: Episode IV (1977)::Action\n"
          "30::Seven (Se7en) (1995)::Crime|Thriller\n", encoding=movies_encoding)
    write(root / "users.dat", "3::M::25::12::55455\n5::F::1::10::48067\n7::M::56::0::70072\n")
    return root


def write_csv_release(root: Path) -> Path:
    write(root / "ratings.csv", "userId,movieId,rating,timestamp\n"
          + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in RATINGS))
    write(root / "movies.csv", 'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
          '20,"Fawlty Towers (1975-1979)",Comedy\n30,"Dr. ""Strangelove"" (1964)",(no genres listed)\n'
          "50,Hyena Road,Drama\n")
    return root


def test_ml100k_layout(tmp_path):
    data = load_movielens("ml-100k", write_100k(tmp_path), verify_counts=False)
    users, items, ts = data.interactions()
    assert data.user_ids.decode(users).tolist() == [u for u, _, _, _ in RATINGS]  # file order, not sorted
    assert data.item_ids.decode(items).tolist() == [i for _, i, _, _ in RATINGS]
    assert ts.tolist() == [t for _, _, _, t in RATINGS]
    assert data.events.column("value").to_pylist() == [4.0, 5.0, 2.0, 1.0, 3.0]  # written as ints
    assert set(data.events.column("event_type").to_pylist()) == {"rating"}
    rows = {r["item_id"]: r for r in data.items.to_pylist()}
    cafe = rows[int(data.item_ids.encode([10])[0])]
    assert (cafe["title"], cafe["year"], cafe["genres"]) == ("Café Society", 1995, ["Action", "Drama"])
    unknown = rows[int(data.item_ids.encode([20])[0])]  # no year in the title: from the release date
    assert (unknown["title"], unknown["year"], unknown["genres"]) == ("unknown", 1997, ["unknown"])
    missing = rows[int(data.item_ids.encode([30])[0])]
    assert (missing["title"], missing["year"], missing["genres"]) == ("", None, [])
    assert data.options["items_without_events"] == 1 and data.options["items_missing_metadata"] == 1
    assert data.users.column("user_id").to_pylist() == [1, 2, 3]
    assert data.users.column("zip").to_pylist() == ["85711", "T8H1N", "02138"]
    assert data.users.column("age").to_pylist() == [24, 53, 33]
    assert data.options["users_without_events"] == 1
    assert set(data.source_files) == {"u.data", "u.item", "u.user", "u.genre"} and data.source == "ml-100k"


def test_ml100k_without_genre_file_uses_the_standard_list(tmp_path):
    data = load_movielens("ml-100k", write_100k(tmp_path, genre_file=False), verify_counts=False)
    assert data.items.column("genres").to_pylist()[0] == ["Action", "Drama"]
    assert "u.genre" not in data.source_files


def test_id_map_round_trip(tmp_path):
    data = load_movielens("ml-100k", write_100k(tmp_path), verify_counts=False)
    assert data.user_ids.raw.tolist() == [3, 5, 7] and data.item_ids.raw.tolist() == [10, 20, 30]
    raw = np.array([30, 10, 20])
    assert data.item_ids.decode(data.item_ids.encode(raw)).tolist() == raw.tolist()
    with pytest.raises(KeyError):
        data.item_ids.encode([40])  # in u.item, never rated


def test_ml1m_dat_layout(tmp_path):
    data = load_movielens("ml-1m", write_dat(tmp_path), verify_counts=False)
    assert data.interactions()[2].tolist() == [300, 100, 100, 200, 100]
    assert data.items.column("title").to_pylist() == ["Amélie", "Star Wars: Episode IV", "Seven (Se7en)"]
    assert data.items.column("year").to_pylist() == [2001, 1977, 1995]
    assert data.items.column("genres").to_pylist()[0] == ["Comedy", "Romance"]
    users = data.users.to_pylist()
    assert users[0] == {"user_id": 1, "age": 25, "gender": "M", "occupation": "programmer", "zip": "55455"}
    assert [u["occupation"] for u in users] == ["programmer", "K-12 student", "other"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_ml10m_reads_utf8_and_falls_back_to_latin1(tmp_path, encoding):
    root = tmp_path / "ml-10M100K"
    write_dat(root, movies_encoding=encoding)
    (root / "users.dat").unlink()  # ml-10m has no user file
    assert find_release_dir("ml-10m", tmp_path) == root
    data = load_movielens("ml-10m", root, verify_counts=False)
    assert data.items.column("title").to_pylist()[0] == "Amélie"
    assert data.users.column_names == ["user_id"] and data.users.num_rows == 3


def test_csv_layout(tmp_path):
    data = load_movielens("ml-20m", write_csv_release(tmp_path), verify_counts=False)
    assert data.events.column("value").to_pylist() == [r for _, _, r, _ in RATINGS]
    items = data.items.to_pylist()
    assert [i["title"] for i in items] == ["American President, The", "Fawlty Towers", 'Dr. "Strangelove"']
    assert [i["year"] for i in items] == [1995, 1975, 1964]
    assert [i["genres"] for i in items] == [["Comedy", "Drama", "Romance"], ["Comedy"], []]
    assert data.options["items_without_events"] == 1  # Hyena Road
    assert data.users.column_names == ["user_id"]


def test_min_rating_filters_then_maps_ids(tmp_path):
    data = load_movielens("ml-20m", write_csv_release(tmp_path), min_rating=3.5, verify_counts=False)
    assert data.events.column("value").to_pylist() == [4.0, 5.0, 3.5]
    assert data.user_ids.raw.tolist() == [3, 5, 7] and data.item_ids.raw.tolist() == [10, 20]
    assert data.items.num_rows == 2 and data.options["items_without_events"] == 2
    assert data.options["ratings_in_file"] == 5
    with pytest.raises(ValueError, match="keeps none"):
        load_movielens("ml-20m", tmp_path, min_rating=6, verify_counts=False)


def test_counts_are_verified_before_filtering(tmp_path):
    with pytest.raises(DataFormatError) as info:
        load_movielens("ml-100k", write_100k(tmp_path), min_rating=4)
    message = str(info.value)
    assert info.value.path.name == "u.data" and "100,000" in message and "943" in message and "1,682" in message
    assert "5 ratings by 3 users on 3 movies" in message
    assert "verify_counts=False" in message and "--no-verify-counts" in message


def test_registry():
    assert set(RELEASES) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "ml-latest"}
    for spec in RELEASES.values():
        assert spec.url == f"{BASE_URL}{spec.name}.zip" and spec.url.startswith("https://")
        assert spec.md5 is None or len(spec.md5) == 32
    assert get_release("ml-10m").archive_folder == "ml-10M100K"
    assert get_release("ml-1m").counts.ratings == 1_000_209 and get_release("ml-latest").counts is None
    with pytest.raises(ValueError, match="ml-100k.*ml-latest"):
        get_release("ml-3m")


@pytest.mark.parametrize("raw, expected", [
    ("Toy Story (1995)", ("Toy Story", 1995)),
    ("Big Bang Theory, The (2007-)", ("Big Bang Theory, The", 2007)),
    ("Babylon 5 (1994) ", ("Babylon 5", 1994)),
    ("Hyena Road", ("Hyena Road", None)),
    ("1984 (1956)", ("1984", 1956)),
])
def test_split_title(raw, expected):
    assert split_title(raw) == expected


# (release, file, content or None to delete it, expected line, message fragment)
MALFORMED = [
    ("ml-100k", "u.data", "3\t10\t5\t100\n3,20,4,200\n", 2, "expected 4 fields separated by '\\t', found 1"),
    ("ml-100k", "u.data", "3\t10\t5\t100\n3\t20\t4\t200\nx7\t10\t2\t100\n", 3, "column 'userId': 'x7'"),
    ("ml-100k", "u.data", "3\t10\t5\t100\n3\t20\t4\tyesterday\n", 2, "column 'timestamp'"),
    ("ml-100k", "u.data", "3\t10\t5\t100\n3\t20\tgood\t200\n", 2, "'good' is not a number"),
    ("ml-100k", "u.data", "3\t10\t5\t100\n\n3\t20\tnan\t200\n", 3, "not a finite number"),
    ("ml-100k", "u.data", "3\t10\t5\t100\n3\t20\t\t200\n", 2, "column 'rating' is empty"),
    ("ml-100k", "u.data", "", None, "is empty"),
    ("ml-100k", "u.item", "10|Heat (1995)|01-Jan-1995||url|0|1\n", 1, "expected 24 fields separated by '|'"),
    ("ml-100k", "u.user", "3|24|M|technician|85711\n5|old|F|other|T8H1N\n", 2, "column 'age': 'old'"),
    ("ml-100k", "u.genre", "unknown|0\nAction|7\n", None, "numbers its genres"),
    ("ml-100k", "u.user", None, None, "the ml-100k release expects u.data, u.item, u.user"),
    ("ml-1m", "ratings.dat", "3::10::5::100\n3:20:4:200\n", 2, "expected 4 fields separated by '::', found 1"),
    ("ml-1m", "ratings.dat", "3::10::5::100::9\n", 1, "found 5"),
    ("ml-1m", "movies.dat", "10::Heat (1995)::Action\n20::Up (2009)::Comedy\n10::Heat (1995)::Drama\n", 3,
     "movie id 10 appears a second time"),
    ("ml-1m", "users.dat", "3::M::25::12::55455\n5::F::1::42::48067\n", 2, "occupation code 42"),
    ("ml-1m", "movies.dat", None, None, "the ml-1m release expects ratings.dat, movies.dat, users.dat"),
    ("ml-20m", "ratings.csv", "userId,itemId,rating,timestamp\n3,10,5,100\n", 1, "header is"),
    ("ml-20m", "ratings.csv", "userId,movieId,rating,timestamp\n3,10,5,100\n\n3,20,x,200\n", 4, "'x' is not a number"),
    ("ml-20m", "ratings.csv", "userId,movieId,rating,timestamp\n", None, "holds no ratings"),
    ("ml-20m", "movies.csv", b'movieId,title,genres\n10,Heat (1995),Action\n20,"Caf\xe9 (1995)",Drama\n', 3,
     "is not valid utf-8: byte 0xe9"),
    ("ml-20m", "movies.csv", "movieId,title,genres\n10,American President, The (1995),Comedy\n", 2, "found 4"),
]


@pytest.mark.parametrize("release, file_name, content, line, fragment", MALFORMED,
                         ids=[f"{m[0]}-{m[1]}-{k}" for k, m in enumerate(MALFORMED)])
def test_malformed_input_names_file_and_line(tmp_path, release, file_name, content, line, fragment):
    writer = {"ml-100k": write_100k, "ml-1m": write_dat, "ml-20m": write_csv_release}[release]
    root = writer(tmp_path)
    if content is None:
        (root / file_name).unlink()
    else:
        write(root / file_name, content)
    with pytest.raises(DataFormatError) as info:
        load_movielens(release, root, verify_counts=False)
    error = info.value
    assert error.path == root / file_name and error.line == line
    assert fragment in str(error)
    assert str(error).startswith(f"{root / file_name}" + ("" if line is None else f", line {line}:"))


def test_real_ml100k_matches_the_official_counts(ml100k_raw):
    data = load_movielens("ml-100k", ml100k_raw)
    assert (data.events.num_rows, data.n_users, data.n_items) == (100_000, 943, 1_682)
    assert data.items.num_rows == 1_682 and data.users.num_rows == 943
    first = data.items.slice(0, 1).to_pylist()[0]
    assert (first["title"], first["year"]) == ("Toy Story", 1995)
    assert first["genres"] == ["Animation", "Children's", "Comedy"]
    assert data.user_ids.decode(data.interactions()[0][:3]).tolist() == [196, 186, 22]  # u.data's first lines
    assert data.options["items_without_events"] == 0 and data.options["items_missing_metadata"] == 0
