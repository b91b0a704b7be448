"""Teacher targets for distillation: what a (slow) teacher thinks of the retriever's candidates at
sampled training positions, computed once and stored for every student that learns from it.

Rows come from the leave-one-out TRAINING rows only (the last ``positions_per_user`` positions of each
user): a teacher row never sees a validation or test event. Candidates are the retriever's top K items
for the prefix, the prefix's items excluded (the item at the position may be among them: the teacher
should put mass on it). Stored as ``teacher.safetensors`` (``prefix [P, L]`` left-padded, ``candidates
[P, K]``, raw teacher ``scores [P, K]``, and ``users``, ``positions``, ``targets [P]`` tying each row to
the split) plus the sidecar ``teacher.safetensors.json`` (teacher, K, retriever, data manifest checksum,
the tensors' sha256). Raw scores, not probabilities: the temperature is the student's choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from seekrec.data.schema import InteractionData
from seekrec.data.splits import Split, UserSequences, load_split
from seekrec.io import atomic_path, atomic_write_json, sha256_file
from seekrec.llm.examples import UserEvents
from seekrec.llm.prompts import History
from seekrec.models.layers.context import CONTEXT_FLAGS
from seekrec.training.distributed import resolve_device
from seekrec.training.experiment import genre_features
from seekrec.training.progress import progress_log
from seekrec.training.run_dir import RunDir, RunDirError, RunModel, read_json

log = logging.getLogger(__name__)
TARGETS_FILE = "teacher.safetensors"
TARGETS_FORMAT = 1
TENSORS = ("prefix", "candidates", "scores", "users", "positions", "targets")
Teacher = Callable[[History, np.ndarray], np.ndarray]  # (history, items [K]) -> scores [K]


@dataclass
class TargetsConfig:
    """``[targets]``: where the teacher is asked. The last ``positions_per_user`` training positions of every
    user (prefix = the items before it); candidates = the ``n_candidates`` (K) best items the retriever
    ranks for that prefix, items of the prefix excluded. ``max_users``: ask about that many users only
    (drawn with ``seed``; None: all), since each row costs a teacher call. ``retriever_run``: a ``seekrec
    train`` run (None: ``init_run``, the student itself). ``path``: the targets file (None:
    ``<out>/teacher.safetensors``); an existing one is reused after its checks, a missing one is computed there."""

    path: str | None = None
    retriever_run: str | None = None
    n_candidates: int = 50
    positions_per_user: int = 5
    max_users: int | None = None
    seed: int = 0
    batch_size: int = 256  # prefixes per retriever forward

    def __post_init__(self) -> None:
        if self.n_candidates < 2:
            raise ValueError("targets.n_candidates must be >= 2 (a softmax over one item teaches nothing), "
                             f"got {self.n_candidates}")
        if self.positions_per_user < 1 or self.batch_size < 1 or (self.max_users is not None and self.max_users < 1):
            raise ValueError("targets.positions_per_user, targets.batch_size and targets.max_users must be >= 1")


# -- the targets file -------------------------------------------------------------------------------------
class TargetsError(ValueError):
    """A targets file that is missing, corrupted or made for other data / settings; says what to do."""


@dataclass
class TeacherTargets:
    """Teacher scores at P training positions. ``prefix [P, L]`` left-padded item ids before the position;
    ``candidates [P, K]`` (0 = padding, when fewer than K items were unseen) and their raw teacher
    ``scores [P, K]``; ``users``, ``positions`` (index in the user's training row) and ``targets`` (the item
    at it) ``[P]`` tie every row to the split it came from. ``meta``: the sidecar (teacher, K, data ...)."""

    prefix: Tensor
    candidates: Tensor
    scores: Tensor
    users: Tensor
    positions: Tensor
    targets: Tensor
    meta: dict[str, Any]
    source: Path | None = None  # the file it was loaded from, for messages

    def __len__(self) -> int:
        return int(self.prefix.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).contiguous() for name in TENSORS}

    def save(self, path: str | Path) -> None:
        """``path`` (safetensors) then its sidecar ``path.json`` (with the file's sha256), both atomic: a
        file without its sidecar is an unfinished write and is refused."""
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(self.tensors(), str(tmp))
        self.meta = {**self.meta, "tensors_sha256": sha256_file(path)}
        atomic_write_json(sidecar(path), self.meta)

    @classmethod
    def load(cls, path: str | Path) -> TeacherTargets:
        """The targets at ``path``, checked against the sidecar's checksum and for consistent shapes."""
        path = Path(path)
        if not path.is_file():
            raise TargetsError(f"{path}: missing; compute the teacher targets first")
        try:
            meta = read_json(sidecar(path))
        except RunDirError as exc:
            raise TargetsError(f"{exc}: the targets were not written to the end; delete {path} to recompute") from exc
        if meta.get("format") != TARGETS_FORMAT:
            raise TargetsError(f"{sidecar(path)}: format {meta.get('format')!r}, expected {TARGETS_FORMAT}")
        if sha256_file(path) != meta.get("tensors_sha256"):
            raise TargetsError(f"{path}: corrupted (sha256 differs from {sidecar(path).name}); delete it to recompute")
        try:
            tensors = load_file(str(path))
        except SafetensorError as exc:
            raise TargetsError(f"{path}: unreadable ({exc}); delete it to recompute") from exc
        missing = [name for name in TENSORS if name not in tensors]
        if missing:
            raise TargetsError(f"{path}: no tensor {missing[0]!r}; delete it to recompute")
        targets = cls(**{name: tensors[name] for name in TENSORS}, meta=meta, source=path)
        rows, k = targets.candidates.shape
        if targets.scores.shape != (rows, k) or targets.prefix.shape[0] != rows or k != meta.get("k") or any(
                getattr(targets, name).shape != (rows,) for name in ("users", "positions", "targets")):
            raise TargetsError(f"{path}: tensor shapes disagree with each other or with k={meta.get('k')}")
        return targets

    def check_data(self, data_dir: str | Path, split: Split, manifest_sha: str, n_items: int) -> None:
        """Refuse targets made from another dataset or split: the manifest checksum, the candidate ids, then
        every stored prefix and target against this split's training rows (a teacher row must never have
        seen a validation or test event)."""
        where = self.source or "the targets"
        if self.meta.get("data_manifest_sha256") != manifest_sha:
            raise TargetsError(f"{where}: made from dataset {self.meta.get('data_source')!r} with another manifest "
                               f"than {data_dir}; recompute the targets for this dataset")
        if len(self) and (int(self.candidates.min()) < 0 or int(self.candidates.max()) > n_items):
            raise TargetsError(f"{where}: candidate ids outside 0..{n_items}; recompute the targets")
        users, positions = self.users.numpy(), self.positions.numpy()
        if users.size and (users.min() < 1 or users.max() > split.train.n_users):
            raise TargetsError(f"{where}: user ids outside 1..{split.train.n_users}; recompute the targets")
        if np.any(positions < 1) or np.any(positions >= split.train.lengths()[users]):
            raise TargetsError(f"{where}: positions outside the users' training rows ({split.name}); recompute the "
                               "targets for this data")
        prefix, target = prefix_rows(split.train, users, positions, self.prefix.shape[1])
        if not np.array_equal(prefix, self.prefix.numpy()) or not np.array_equal(target, self.targets.numpy()):
            raise TargetsError(f"{where}: its prefixes are not this split's training rows ({split.name}); "
                               "recompute the targets for this data")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def sample_positions(train: UserSequences, per_user: int, max_users: int | None = None,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``users [P]``, ``positions [P]``: each user's last ``per_user`` training positions that have at
    least one item before them (oldest first within a user); of ``max_users`` users drawn with ``seed``
    when given, in user order."""
    lengths = train.lengths()
    take = np.clip(lengths - 1, 0, per_user)  # position 0 has an empty prefix
    eligible = np.flatnonzero(take)
    if max_users is not None and max_users < len(eligible):
        keep = np.zeros_like(take)
        keep[np.random.default_rng(seed).choice(eligible, max_users, replace=False)] = 1
        take = take * keep
    users = np.repeat(np.arange(len(lengths)), take)
    starts = np.repeat(lengths - take, take)
    positions = starts + (np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take))
    return users.astype(np.int64), positions.astype(np.int64)


def prefix_rows(train: UserSequences, users: np.ndarray, positions: np.ndarray,
                width: int) -> tuple[np.ndarray, np.ndarray]:
    """``[P, width]`` the last ``width`` items before each position, left-padded, and ``[P]`` the item at it."""
    out = np.zeros((len(users), width), dtype=np.int64)
    starts = train.offsets[users]
    for r, (start, pos) in enumerate(zip(starts, positions)):
        items = train.items[start + max(0, pos - width) : start + pos]
        out[r, width - len(items):] = items
    return out, train.items[starts + positions]


@torch.inference_mode()
def retrieve(model: nn.Module, train: UserSequences, users: np.ndarray, positions: np.ndarray, k: int, max_len: int,
             *, batch_size: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
    """``[P, K]`` the retriever's top K items for each prefix (its last ``max_len`` items as input); items
    anywhere in the prefix and padding excluded; 0 where fewer than K items are left."""
    model.eval()
    out = np.zeros((len(users), k), dtype=np.int64)
    for lo in range(0, len(users), batch_size):
        sel = slice(lo, lo + batch_size)
        width = int(max(positions[sel].max(initial=1), 1))
        seen, _ = prefix_rows(train, users[sel], positions[sel], width)  # the whole prefix, for masking
        seen_t = torch.from_numpy(seen).to(device)
        scores = model.score_all(seen_t[:, -max_len:]).float()  # [B, N + 1]
        scores[:, 0] = -torch.inf
        scores.scatter_(1, seen_t, -torch.inf)
        top = scores.topk(min(k, scores.shape[1] - 1), dim=1)
        ids = top.indices.masked_fill(torch.isinf(top.values), 0)
        out[sel, : ids.shape[1]] = ids.cpu().numpy()
    return out


def teacher_name(teacher: Teacher | str | Path) -> str:
    """How the sidecar names the teacher: a run's resolved path, else the callable's ``name`` attribute or
    qualified name (``LLMReranker.scores`` for a loaded reranker's bound method)."""
    if isinstance(teacher, (str, Path)):
        return str(Path(teacher).resolve())
    return str(getattr(teacher, "name", None) or getattr(teacher, "__qualname__", None) or type(teacher).__qualname__)


def load_teacher(teacher: Teacher | str | Path, device: str) -> Teacher:
    """A callable teacher as is; a path: the fine-tuned LLM run it names (``LLMReranker.scores``)."""
    if not isinstance(teacher, (str, Path)):
        return teacher
    from seekrec.llm.rerank import LLMReranker

    return LLMReranker.load(Path(teacher), device=device).scores


def compute_targets(config: TargetsConfig, data_dir: str | Path, teacher: Teacher | str | Path, out: str | Path,
                    *, retriever_run: str | Path | None = None, max_len: int = 50, device: str = "auto",
                    progress: bool = True) -> TeacherTargets:
    """Score the retriever's candidates with ``teacher`` at the sampled training positions; write ``out``
    (+ sidecar) and return the targets. ``retriever_run`` overrides ``config.retriever_run``;
    ``max_len``: the prefix width stored (the student's input length)."""
    start = time.perf_counter()
    run = retriever_run if retriever_run is not None else config.retriever_run
    if run is None:
        raise ValueError("targets.retriever_run: no retriever run to take the candidates from")
    dev = resolve_device(device)
    data, split = load_split(data_dir, "leave_one_out")
    manifest_sha = sha256_file(Path(data_dir) / "manifest.json")
    retriever, spec = load_run_model(run, data, manifest_sha)
    users, positions = sample_positions(split.train, config.positions_per_user, config.max_users, config.seed)
    if not len(users):
        raise ValueError(f"{data_dir}: no user has two training events; nothing to distil")
    prefix, targets = prefix_rows(split.train, users, positions, max_len)
    candidates = retrieve(retriever.to(dev), split.train, users, positions, config.n_candidates, spec.max_len,
                          batch_size=config.batch_size, device=dev)
    score_fn = load_teacher(teacher, str(dev))
    events = UserEvents.from_data(data)
    scores = np.zeros(candidates.shape, dtype=np.float32)
    bar = tqdm(range(len(users)), desc="teacher", unit="row", disable=None if progress else True)
    lines = progress_log("teacher targets", len(users), progress)
    for r in bar:
        valid = candidates[r] > 0
        got = np.asarray(score_fn(events.history(int(users[r]), int(positions[r])), candidates[r][valid]), np.float32)
        if got.shape != (int(valid.sum()),) or not np.all(np.isfinite(got)):
            raise ValueError(f"the teacher returned {got.shape} scores ({'non-finite' if got.size else 'empty'}) "
                             f"for {int(valid.sum())} candidates; it must return one finite score per item")
        scores[r, valid] = got
        if lines is not None:
            lines.update()
    meta = {"format": TARGETS_FORMAT, "teacher": teacher_name(teacher), "k": config.n_candidates,
            "positions_per_user": config.positions_per_user, "max_users": config.max_users, "seed": config.seed,
            "max_len": max_len, "split": split.name,
            "retriever_run": str(Path(run).resolve()),
            "retriever_weights_sha256": sha256_file(RunDir(Path(run)).best_weights),
            "data_manifest_sha256": manifest_sha, "data_source": data.source, "n_items": data.n_items,
            "rows": len(users), "seconds": round(time.perf_counter() - start, 2)}
    result = TeacherTargets(torch.from_numpy(prefix), torch.from_numpy(candidates), torch.from_numpy(scores),
                            torch.from_numpy(users), torch.from_numpy(positions), torch.from_numpy(targets), meta)
    result.save(out)
    log.info("teacher targets: %d rows x %d candidates in %.1f s -> %s", len(users), config.n_candidates,
             meta["seconds"], out)
    return result


def load_run_model(run: str | Path, data: InteractionData, manifest_sha: str) -> tuple[nn.Module, RunModel]:
    """The best weights of a ``seekrec train`` run, refused when it was trained on another dataset."""
    run_dir = RunDir(Path(run))
    trained_on = run_dir.read_config().get("data_manifest_sha256")
    if trained_on != manifest_sha:
        raise ValueError(f"{run}: trained on another dataset (manifest sha256 {str(trained_on)[:12]}...); use a run "
                         "trained on this data")
    spec = run_dir.read_model()
    refuse_context_inputs(spec.config, str(run))
    model = spec.build(item_features=genre_features(data) if spec.use_item_features else None)
    return run_dir.load_best(model), spec


def refuse_context_inputs(model_config: dict[str, Any], what: str) -> None:
    """ValueError when ``model_config`` has event-time / action inputs: teacher targets and distillation
    keep item-id prefixes only (no event times to feed such a model)."""
    flags = [name for name in CONTEXT_FLAGS if model_config.get(name)]
    if flags:
        raise ValueError(f"{what}: the model uses event-time/action inputs ({', '.join(flags)}), which teacher "
                         "targets and distillation do not feed (their prefixes are item ids only); use a model "
                         "trained without them")
