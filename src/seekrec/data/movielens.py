"""MovieLens releases (100K to 25M and the "latest" snapshots) -> ``InteractionData``.

Every rating becomes one implicit interaction (``event_type="rating"``, ``value`` = the stars) in the
ratings file's own order, so equal timestamps keep their order. Counts are checked against GroupLens'
published figures so that a truncated download or a wrong folder fails loudly instead of silently
training on other data.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seekrec.data.errors import DataFormatError
from seekrec.data.schema import IdMap, InteractionData, build_events
from seekrec.data.tabular import (
    TextFormat,
    align_rows,
    first_duplicate,
    first_true,
    fit_and_encode,
    line_of_row,
    read_text_table,
)
from seekrec.io import sha256_file

logger = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
NO_GENRES = "(no genres listed)"
# u.genre of ml-100k, in flag order; used when that file is absent.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
# ml-1m users.dat stores occupations as codes 0..20; these are the names its README gives them.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
# "Toy Story (1995)", "Fawlty Towers (1975-1979)", "Big Bang Theory, The (2007-)" -> title and first year.
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")


class Layout(enum.Enum):
    """The three file layouts GroupLens has used."""

    ML100K = "ml-100k"  # u.data (tab-separated), u.item and u.user ("|"-separated), u.genre
    DAT = "dat"  # ratings.dat, movies.dat (and users.dat in ml-1m), "::"-separated, no header
    CSV = "csv"  # ratings.csv and movies.csv with a header line and quoted titles


_FILES = {
    Layout.ML100K: ("u.data", "u.item", "u.user"),
    Layout.DAT: ("ratings.dat", "movies.dat", "users.dat"),
    Layout.CSV: ("ratings.csv", "movies.csv", None),
}


@dataclass(frozen=True)
class OfficialCounts:
    """GroupLens' published size of a release; ``items`` counts movies with at least one rating."""

    ratings: int
    users: int
    items: int


@dataclass(frozen=True)
class ReleaseSpec:
    """One MovieLens release: where to get it, how its files look, and what it must contain.

    ``md5`` is the archive's checksum as GroupLens publishes it in ``<zip>.md5``; it is ``None`` for
    the "latest" releases, which change over time (the downloader then reads the published sidecar).
    """

    name: str
    layout: Layout
    archive_folder: str  # top-level folder inside the zip
    md5: str | None
    counts: OfficialCounts | None
    text_encodings: tuple[str, ...] = ("utf-8",)
    has_users: bool = False

    @property
    def url(self) -> str:
        return f"{BASE_URL}{self.name}.zip"

    @property
    def ratings_file(self) -> str:
        return _FILES[self.layout][0]

    @property
    def movies_file(self) -> str:
        return _FILES[self.layout][1]

    @property
    def users_file(self) -> str | None:
        return _FILES[self.layout][2] if self.has_users else None

    @property
    def required_files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ratings_file, self.movies_file, self.users_file) if f is not None)


RELEASES: dict[str, ReleaseSpec] = {
    spec.name: spec
    for spec in (
        ReleaseSpec("ml-100k", Layout.ML100K, "ml-100k", "0e33842e24a9c977be4e0107933c0723",
                    OfficialCounts(100_000, 943, 1_682), ("latin-1",), has_users=True),
        ReleaseSpec("ml-1m", Layout.DAT, "ml-1m", "c4d9eecfca2ab87c1945afe126590906",
                    OfficialCounts(1_000_209, 6_040, 3_706), ("latin-1",), has_users=True),
        ReleaseSpec("ml-10m", Layout.DAT, "ml-10M100K", "ce571fd55effeba0271552578f2648bd",
                    OfficialCounts(10_000_054, 69_878, 10_677), ("utf-8", "latin-1")),
        ReleaseSpec("ml-20m", Layout.CSV, "ml-20m", "cd245b17a1ae2cc31bb14903e1204af3",
                    OfficialCounts(20_000_263, 138_493, 26_744)),
        ReleaseSpec("ml-25m", Layout.CSV, "ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada",
                    OfficialCounts(25_000_095, 162_541, 59_047)),
        # A development snapshot: these are the counts of the September 2018 version.
        ReleaseSpec("ml-latest-small", Layout.CSV, "ml-latest-small", None, OfficialCounts(100_836, 610, 9_724)),
        ReleaseSpec("ml-latest", Layout.CSV, "ml-latest", None, None),
    )
}


def get_release(name: str) -> ReleaseSpec:
    """The spec of a release; ``ValueError`` listing the known names otherwise."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ValueError(f"unknown MovieLens release {name!r}; choose one of {', '.join(RELEASES)}") from None


def find_release_dir(name: str, root: str | Path) -> Path | None:
    """The folder holding ``name``'s ratings file: ``root`` itself, ``root/name`` or the zip's folder."""
    spec = get_release(name)
    root = Path(root)
    for folder in (root, root / spec.name, root / spec.archive_folder):
        if (folder / spec.ratings_file).is_file():
            return folder
    return None


def load_movielens(
    name: str, raw_dir: str | Path, *, min_rating: float | None = None, verify_counts: bool = True
) -> InteractionData:
    """Load an extracted MovieLens release from ``raw_dir`` (the folder holding its files).

    ``min_rating`` keeps only ratings >= it (ids are assigned after filtering). With ``verify_counts``
    the unfiltered ratings must match the official counts; pass ``False`` for a deliberate subset.
    """
    spec = get_release(name)
    root = Path(raw_dir)
    for file_name in spec.required_files:
        if not (root / file_name).is_file():
            raise DataFormatError(root / file_name, f"not found: the {spec.name} release expects "
                                  f"{', '.join(spec.required_files)} in {root}. Download it with download=True "
                                  f"(--download) or point raw_dir at the extracted {spec.archive_folder} folder.")
    ratings_path = root / spec.ratings_file
    users_raw, items_raw, stars, timestamps = _read_ratings(ratings_path, spec)
    (user_ids, user_codes), (item_ids, item_codes) = fit_and_encode(users_raw), fit_and_encode(items_raw)
    if verify_counts:
        _verify_counts(spec, ratings_path, OfficialCounts(len(stars), len(user_ids), len(item_ids)))
    options: dict[str, object] = {"release": spec.name, "min_rating": min_rating, "verify_counts": verify_counts,
                                  "ratings_in_file": len(stars)}
    if min_rating is not None:
        keep = stars >= min_rating
        if not keep.any():
            raise ValueError(f"min_rating={min_rating} keeps none of the ratings in {ratings_path} "
                             f"(they range from {stars.min()} to {stars.max()})")
        users_raw, items_raw, stars, timestamps = (a[keep] for a in (users_raw, items_raw, stars, timestamps))
        (user_ids, user_codes), (item_ids, item_codes) = fit_and_encode(users_raw), fit_and_encode(items_raw)
    events = build_events(user_codes, item_codes, timestamps, stars, "rating")
    movie_ids, movies, movie_files = _MOVIE_READERS[spec.layout](root, spec)
    items = _items_table(item_ids, movie_ids, movies, options)
    users = _users_table(spec, root, user_ids, options)
    read = [spec.ratings_file, *movie_files, *([spec.users_file] if spec.users_file else [])]
    source_files = {file_name: sha256_file(root / file_name) for file_name in read}
    logger.info("%s: %d events, %d users, %d items", spec.name, events.num_rows, len(user_ids), len(item_ids))
    return InteractionData(events, items, users, user_ids, item_ids, source=spec.name,
                           source_files=source_files, options=options)


def split_title(raw_title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; titles without a trailing year are kept whole."""
    match = _TITLE_YEAR.match(raw_title)
    if match is None:
        return raw_title.strip(), None
    return match["title"], int(match["year"])


def _verify_counts(spec: ReleaseSpec, path: Path, found: OfficialCounts) -> None:
    want = spec.counts
    if want is None or found == want:
        return
    raise DataFormatError(path, f"{spec.name} should hold {want.ratings:,} ratings by {want.users:,} users on "
                          f"{want.items:,} movies (the official counts) but holds {found.ratings:,} ratings by "
                          f"{found.users:,} users on {found.items:,} movies. Is the download truncated or modified? "
                          "For a deliberate subset pass verify_counts=False (--no-verify-counts).")


def _read_ratings(path: Path, spec: ReleaseSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, item, stars, timestamp)`` arrays in file order."""
    names = ("userId", "movieId", "rating", "timestamp")
    types = (pa.int64(), pa.int64(), pa.float64(), pa.int64())
    delimiter = {Layout.ML100K: "\t", Layout.DAT: "::", Layout.CSV: ","}[spec.layout]
    fmt = TextFormat(delimiter, tuple(zip(names, types)), header=spec.layout is Layout.CSV)
    table = read_text_table(path, fmt)
    if table.num_rows == 0:
        raise DataFormatError(path, "holds no ratings")
    stars = table.column("rating").to_numpy()
    bad = ~np.isfinite(stars)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, f"column 'rating': {stars[row]} is not a finite number",
                              line_of_row(path.read_bytes(), row, int(fmt.header)))
    return (table.column("userId").to_numpy(), table.column("movieId").to_numpy(), stars,
            table.column("timestamp").to_numpy())


def _read_keyed(path: Path, fmt: TextFormat, key: str, noun: str) -> pa.Table:
    """Read a side table whose ``key`` column must be unique."""
    table = read_text_table(path, fmt)
    ids = table.column(key).to_numpy()
    dup = first_duplicate(ids)
    if dup is not None:
        raise DataFormatError(path, f"{noun} id {ids[dup]} appears a second time",
                              line_of_row(path.read_bytes(), dup, int(fmt.header)))
    return table


def _movies_100k(root: Path, spec: ReleaseSpec) -> tuple[np.ndarray, pa.Table, list[str]]:
    genre_names, read = _genres_100k(root)
    flags = tuple((f"flag{k}", pa.int8()) for k in range(len(ML100K_GENRES)))
    columns = (("movie_id", pa.int64()), ("raw_title", pa.string()), ("release_date", pa.string()),
               ("video_release_date", pa.string()), ("imdb_url", pa.string()), *flags)
    table = _read_keyed(root / "u.item", TextFormat("|", columns, encodings=spec.text_encodings), "movie_id", "movie")
    matrix = np.column_stack([table.column(name).to_numpy() != 0 for name, _ in flags])  # [n, 19]
    _, cols = np.nonzero(matrix)  # row-major, so each movie's genres stay in flag order
    offsets = np.concatenate([[0], np.cumsum(matrix.sum(axis=1))]).astype(np.int32)
    genres = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(genre_names, dtype=object)[cols]))
    movies = pa.table({"raw_title": table.column("raw_title"), "genres": genres,
                       "release_date": table.column("release_date"), "imdb_url": table.column("imdb_url")})
    return table.column("movie_id").to_numpy(), movies, ["u.item", *read]


def _genres_100k(root: Path) -> tuple[list[str], list[str]]:
    """Genre names in flag order from ``u.genre`` (or the standard list if it is absent)."""
    path = root / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES), []
    fmt = TextFormat("|", (("name", pa.string()), ("index", pa.int32())), encodings=("latin-1",))
    table = read_text_table(path, fmt)
    index = table.column("index").to_pylist()
    if sorted(index) != list(range(len(ML100K_GENRES))):
        raise DataFormatError(path, f"numbers its genres {sorted(index)}; u.item has {len(ML100K_GENRES)} genre "
                              f"flags, so they must be 0..{len(ML100K_GENRES) - 1}")
    names = dict(zip(index, table.column("name").to_pylist()))
    return [names[k] for k in range(len(ML100K_GENRES))], ["u.genre"]


def _movies_split(root: Path, spec: ReleaseSpec) -> tuple[np.ndarray, pa.Table, list[str]]:
    """movies.dat / movies.csv: id, title, "|"-separated genres."""
    csv_layout = spec.layout is Layout.CSV
    names = ("movieId", "title", "genres") if csv_layout else ("movie_id", "raw_title", "genres")
    fmt = TextFormat("," if csv_layout else "::", tuple(zip(names, (pa.int64(), pa.string(), pa.string()))),
                     header=csv_layout, encodings=spec.text_encodings, quoting=csv_layout)
    table = _read_keyed(root / spec.movies_file, fmt, names[0], "movie")
    genres = [[] if g in ("", NO_GENRES) else g.split("|") for g in table.column("genres").to_pylist()]
    movies = pa.table({"raw_title": table.column(names[1]), "genres": pa.array(genres, pa.list_(pa.string()))})
    return table.column(names[0]).to_numpy(), movies, [spec.movies_file]


_MOVIE_READERS: dict[Layout, Callable[[Path, ReleaseSpec], tuple[np.ndarray, pa.Table, list[str]]]] = {
    Layout.ML100K: _movies_100k,
    Layout.DAT: _movies_split,
    Layout.CSV: _movies_split,
}


def _items_table(item_ids: IdMap, movie_ids: np.ndarray, movies: pa.Table, options: dict[str, object]) -> pa.Table:
    """One row per mapped item, in id order; rated movies missing from the movie file get empty text."""
    aligned, dropped, missing = align_rows(item_ids, movie_ids, movies)
    options.update(items_without_events=dropped, items_missing_metadata=missing)
    if dropped or missing:
        logger.info("%d movies have no rating (dropped); %d rated movies are missing from the movie file",
                    dropped, missing)
    raw_titles = pc.fill_null(aligned.column("raw_title"), "").to_pylist()
    titles, years = zip(*(split_title(t) for t in raw_titles)) if raw_titles else ((), ())
    years = list(years)
    if "release_date" in aligned.column_names:  # ml-100k: fall back on "01-Jan-1995"
        for k, date in enumerate(aligned.column("release_date").to_pylist()):
            if years[k] is None and date and date[-4:].isdigit():
                years[k] = int(date[-4:])
    columns = {
        "item_id": pa.array(np.arange(1, len(item_ids) + 1, dtype=np.int64)),
        "title": pa.array(titles, pa.string()),
        "genres": pc.fill_null(aligned.column("genres"), pa.scalar([], pa.list_(pa.string()))),
        "year": pa.array(years, pa.int32()),
    }
    for name in aligned.column_names:
        if name != "genres":
            columns[name] = pc.fill_null(aligned.column(name), "")
    return pa.table(columns)


def _users_table(spec: ReleaseSpec, root: Path, user_ids: IdMap, options: dict[str, object]) -> pa.Table:
    """``user_id`` for every mapped user, plus age/gender/occupation/zip where the release has them."""
    ids = pa.array(np.arange(1, len(user_ids) + 1, dtype=np.int64))
    if spec.users_file is None:
        return pa.table({"user_id": ids})
    path = root / spec.users_file
    attrs = {"age": pa.int32(), "gender": pa.string(), "occupation": pa.string(), "zip": pa.string()}
    if spec.layout is Layout.ML100K:
        order = ("user_id", "age", "gender", "occupation", "zip")
        table = _read_keyed(path, TextFormat("|", tuple((n, attrs.get(n, pa.int64())) for n in order),
                                             encodings=spec.text_encodings), "user_id", "user")
    else:  # ml-1m: UserID::Gender::Age::Occupation::Zip-code; age is the README's range code (1, 18, 25, ...)
        order = ("user_id", "gender", "age", "occupation", "zip")
        types = {**attrs, "user_id": pa.int64(), "occupation": pa.int32()}
        table = _read_keyed(path, TextFormat("::", tuple((n, types[n]) for n in order),
                                             encodings=spec.text_encodings), "user_id", "user")
        codes = table.column("occupation").to_numpy()
        bad = (codes < 0) | (codes >= len(ML1M_OCCUPATIONS))
        if bad.any():
            row = first_true(pa.array(bad))
            raise DataFormatError(path, f"occupation code {codes[row]} is not one of 0..{len(ML1M_OCCUPATIONS) - 1}",
                                  line_of_row(path.read_bytes(), row))
        names = pa.array(np.asarray(ML1M_OCCUPATIONS, dtype=object)[codes], pa.string())
        table = table.set_column(table.column_names.index("occupation"), "occupation", names)
    aligned, dropped, missing = align_rows(user_ids, table.column("user_id").to_numpy(), table.select(list(attrs)))
    options.update(users_without_events=dropped, users_missing_attributes=missing)
    return pa.table({"user_id": ids, **{name: aligned.column(name) for name in attrs}})
