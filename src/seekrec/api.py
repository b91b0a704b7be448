"""The Python API, for notebooks: load a trained model and ask it for recommendations by raw ids.

    >>> import seekrec.api
    >>> rec = seekrec.api.load("runs/sasrec", data="data/ml-100k")   # a run directory, or a registry
    >>> rec.recommend(["50", "172", "181"], k=5)                      # a history of raw item ids
    >>> rec.recommend("196", k=5)                                     # a user of the dataset

It composes what serving uses, without FastAPI: the model and its item catalog (from a run's ``best/``
through ``RunDir``, or from a registry version through ``ModelRegistry.load``) become a
``SequencePredictor``, so a score here is the score the server would give.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seekrec.data.schema import InteractionData
from seekrec.data.vocab import Catalog
from seekrec.registry import LoadedModel, ModelRegistry
from seekrec.serving.predictor import Query, Recommendation
from seekrec.serving.sequence_predictor import SequencePredictor
from seekrec.training.run_dir import RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserRecommendations:
    """One user's top items: raw item ids, best first, and their scores (``fallback``: popular items,
    because nothing in the history was known to the model)."""

    user_id: str
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    fallback: bool


class Recommender:
    """A loaded model version with its catalog, and optionally a dataset's user histories."""

    def __init__(self, predictor: SequencePredictor, histories: dict[str, list[str]] | None = None) -> None:
        self.predictor = predictor
        self.histories = histories  # raw user id -> raw item ids, oldest first

    @property
    def version(self) -> str:
        return self.predictor.version

    def recommend(self, user: str | Sequence[str], k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """Top ``k`` ``(raw item id, score)`` for a history of raw item ids (oldest first), or for a user id
        of the dataset given to ``load``. Items the model does not know are ignored; a history with none it
        knows gets the most popular items."""
        rec = self.recommend_many([user], k, exclude_seen)[0]
        return list(zip(rec.item_ids, rec.scores))

    def recommend_many(self, users: Sequence[str | Sequence[str]], k: int = 10,
                       exclude_seen: bool = True) -> list[UserRecommendations]:
        """``recommend`` for a batch (one forward pass): each entry a user id or a history."""
        queries = [self._query(user, n, k, exclude_seen) for n, user in enumerate(users)]
        return [self._result(r) for r in self.predictor.recommend(queries)]

    def recommend_all(self, k: int = 10, batch_size: int = 256, exclude_seen: bool = True,
                      progress: bool = False) -> Iterator[UserRecommendations]:
        """The top ``k`` of every user of the dataset, ``batch_size`` users per forward pass."""
        from tqdm.auto import tqdm

        users = list(self._histories())
        with tqdm(total=len(users), unit="user", disable=not progress) as bar:
            for start in range(0, len(users), batch_size):
                batch = users[start : start + batch_size]
                yield from self.recommend_many(batch, k, exclude_seen)
                bar.update(len(batch))

    def _histories(self) -> dict[str, list[str]]:
        if self.histories is None:
            raise ValueError("recommending by user id needs the users' histories: pass data=PREPARED_DATASET_DIR "
                             "to seekrec.api.load (or give a list of item ids instead)")
        return self.histories

    def _query(self, user: str | Sequence[str], n: int, k: int, exclude_seen: bool) -> Query:
        if isinstance(user, str):
            histories = self._histories()
            if user not in histories:
                raise KeyError(f"user {user!r} is not in the dataset given to load; pass their history instead")
            user_id, history = user, histories[user]
        else:
            user_id, history = f"history-{n}", [str(item) for item in user]
        ids = self.predictor.catalog.items.encode(history)
        known = ids[(ids > 0) & (ids <= self.predictor.n_items)]  # items the model has no embedding for: dropped
        return Query(user_id, tuple(int(i) for i in known), k, exclude_seen)

    @staticmethod
    def _result(rec: Recommendation) -> UserRecommendations:
        return UserRecommendations(rec.user_id, rec.item_ids, rec.scores, rec.fallback)


def load(source: str | Path, version: str | None = None, *, data: str | Path | None = None,
         candidates: int = 200, device: str = "cpu") -> Recommender:
    """A ``Recommender`` from a ``seekrec train`` run directory (its best validation weights) or a model
    registry (``version``, default CURRENT). ``data``: a prepared dataset whose users' histories
    ``recommend(user_id)`` reads. ``candidates``: how many items the ANN index proposes for exact scoring."""
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run or registry directory")
    if (path / "versions").is_dir():
        predictor = SequencePredictor.from_registry(ModelRegistry(path), version, candidates=candidates,
                                                    device=device)
    elif version is not None:
        raise ValueError(f"{path} is a run directory, not a registry: it has one model; drop version={version!r}")
    else:
        predictor = _from_run(RunDir(path), candidates, device)
    if predictor.needs_context:
        raise ValueError(f"{predictor.version} uses event-time/action inputs, which seekrec.api's item-id histories "
                         "cannot feed; serve it with `seekrec serve` (its histories keep event times)")
    return Recommender(predictor, None if data is None else user_histories(data))


def _from_run(run: RunDir, candidates: int, device: str) -> SequencePredictor:
    """The run's best weights as the predictor a registry version would give (its catalog included)."""
    if not run.catalog_file.is_file():
        raise FileNotFoundError(f"{run.catalog_file}: missing; is {run.path} a `seekrec train` run directory?")
    spec = run.read_model()
    model = run.load_best(spec.build()).to(device).eval()
    loaded = LoadedModel(f"run:{run.path.name}", {"model_name": spec.name, "model_config": spec.config}, model,
                         run.path)
    predictor = SequencePredictor(loaded, Catalog.from_bytes(run.catalog_file.read_bytes()), candidates=candidates)
    predictor.check()
    return predictor


def user_histories(data_dir: str | Path) -> dict[str, list[str]]:
    """Raw user id -> raw item ids in time order (ties in file order) over all events of a prepared dataset."""
    data = InteractionData.read(data_dir)
    users, items, times = data.interactions()
    order = np.lexsort((times, users))  # stable: equal timestamps keep the file's order
    users, items = users[order], items[order]
    raw_users = [str(u) for u in data.user_ids.decode(np.unique(users)).tolist()]
    raw_items = np.asarray([str(i) for i in data.item_ids.decode(items).tolist()], dtype=object)
    bounds = np.flatnonzero(np.diff(users)) + 1
    return {user: chunk.tolist() for user, chunk in zip(raw_users, np.split(raw_items, bounds))}


EXPORT_FORMATS = (".csv", ".parquet")


def export_all(recommender: Recommender, out: str | Path, k: int = 10, batch_size: int = 256,
               exclude_seen: bool = True, progress: bool = False) -> int:
    """Write the top ``k`` of every user to ``out`` (CSV or Parquet, by suffix; columns user_id, rank,
    item_id, score), a batch at a time, atomically; returns the number of users written."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from seekrec.io import atomic_path

    out = Path(out)
    if out.suffix.lower() not in EXPORT_FORMATS:
        raise ValueError(f"{out}: the suffix picks the format; use one of {', '.join(EXPORT_FORMATS)}")
    schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                        ("score", pa.float64())])
    users = 0
    with atomic_path(out) as tmp:
        writer = (pq.ParquetWriter(tmp, schema) if out.suffix.lower() == ".parquet"
                  else pacsv.CSVWriter(str(tmp), schema))
        try:
            rows: list[UserRecommendations] = []
            for rec in recommender.recommend_all(k, batch_size, exclude_seen, progress):
                rows.append(rec)
                if len(rows) == batch_size:
                    writer.write_table(_table(rows, schema))
                    users, rows = users + len(rows), []
            if rows or users == 0:
                writer.write_table(_table(rows, schema))
                users += len(rows)
        finally:
            writer.close()
    return users


def _table(rows: Sequence[UserRecommendations], schema: object) -> object:
    import pyarrow as pa

    return pa.table({
        "user_id": [r.user_id for r in rows for _ in r.item_ids],
        "rank": [rank for r in rows for rank in range(1, len(r.item_ids) + 1)],
        "item_id": [item for r in rows for item in r.item_ids],
        "score": [score for r in rows for score in r.scores],
    }, schema=schema)
