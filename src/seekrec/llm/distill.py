"""Distillation: a fine-tuned LLM ranker teaches a serving sequence model (SASRec or any next-item model).

The teacher is too slow to serve but ranks a short candidate list well; the student serves in a
millisecond. So the teacher scores the retriever's top K candidates at sampled TRAINING positions once
(``llm.teacher_targets``: ``teacher.safetensors`` + a JSON sidecar, reusable by every student),
and the student is trained on its usual next-item loss plus, for a slice of those rows each step,

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))    over the same K candidates

at the prefix's last position (Hinton et al. 2015: T^2 keeps the gradient scale independent of T).
Training goes through the project's ``Trainer`` (early stopping on the usual full-ranking validation
NDCG@10, exact resume) and writes a normal run directory, so ``seekrec registry publish`` and the
serving stack take the student like any ``seekrec train`` run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seekrec.config import load_config
from seekrec.data.schema import InteractionData, read_manifest
from seekrec.data.sequences import SeqBatch, SequenceDataset
from seekrec.data.splits import Split, load_split
from seekrec.data.vocab import Catalog
from seekrec.evaluation.ranking import ModelScorer, evaluate
from seekrec.io import sha256_file
from seekrec.llm.teacher_targets import (
    TARGETS_FILE,
    TargetsConfig,
    TargetsError,
    Teacher,
    TeacherTargets,
    compute_targets,
    load_run_model,
    refuse_context_inputs,
    teacher_name,
)
from seekrec.models.base import AuxiliaryOutputs, SequenceRecommender
from seekrec.models.factory import build_loss
from seekrec.models.losses import LossConfig
from seekrec.models.task import SeededGenerator, empty_shard_safe
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shutdown,
)
from seekrec.training.experiment import (
    DataConfig,
    ModelSection,
    fit_record,
    genre_features,
    item_counts,
)
from seekrec.training.run_dir import RunDir, RunModel
from seekrec.training.step import StepStats
from seekrec.training.trainer import SequenceEpochs, Trainer

log = logging.getLogger(__name__)


# -- configuration ---------------------------------------------------------------------------------------
@dataclass
class KDConfig:
    """``[distill]``: ``alpha`` weighs the KL term against the next-item loss (0: plain training, the
    baseline); ``temperature`` (T) softens teacher and student alike; ``rows_per_step``: teacher rows
    added to each optimiser step (None: every row once per epoch, spread over its steps)."""

    alpha: float = 1.0
    temperature: float = 2.0
    rows_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.alpha < 0 or not math.isfinite(self.alpha):
            raise ValueError(f"distill.alpha must be a finite number >= 0, got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        if self.rows_per_step is not None and self.rows_per_step < 1:
            raise ValueError(f"distill.rows_per_step must be >= 1 (or omitted), got {self.rows_per_step}")


@dataclass
class DistillConfig:
    """Everything ``distill`` needs: ``seekrec train``'s sections for the student plus ``[distill]`` and
    ``[targets]``. ``init_run``: fine-tune that run's best weights (its model; leave ``[model]`` out),
    else train ``[model]`` (default SASRec) from scratch."""

    name: str = "distill"
    init_run: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: KDConfig = field(default_factory=KDConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)

    def __post_init__(self) -> None:
        if self.init_run is not None and self.model is not None:
            raise ValueError("init_run and [model] both set: a student fine-tuned from init_run keeps that run's "
                             "model; drop [model] (or init_run to train from scratch)")
        if self.init_run is None and self.targets.retriever_run is None:
            raise ValueError("no retriever: a student trained from scratch needs targets.retriever_run (a "
                             "`seekrec train` run whose top items are the teacher's candidates), or set init_run")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DistillConfig:
        """Read TOML (or defaults) and apply ``section.key=value`` overrides."""
        return load_config(cls, path, overrides)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": None if self.model is None else self.model.to_dict()}


# -- the student's loss ----------------------------------------------------------------------------------
def distillation_loss(student: Tensor, teacher: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """``[R]`` per-row ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` over the valid candidates.

    ``student``, ``teacher``: ``[R, K]`` scores; ``valid [R, K]`` bool (padding candidates False)."""
    t = temperature
    neg = torch.finfo(torch.float32).min
    log_p = F.log_softmax(teacher.float().masked_fill(~valid, neg) / t, dim=-1)
    log_q = F.log_softmax(student.float().masked_fill(~valid, neg) / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).masked_fill(~valid, 0.0).sum(dim=-1)
    return kl * t * t


def candidate_scores(core: SequenceRecommender, hidden: Tensor, candidates: Tensor) -> Tensor:
    """``hidden [R, D]``, ``candidates [R, K]`` -> ``[R, K]`` the model's scores of each row's candidates."""
    return core.similarity.pairwise(hidden[:, None, :], core.encode_items(candidates))


@dataclass
class DistillBatch:
    """A next-item micro-batch plus R teacher rows: ``prefix [R, L]``, ``candidates [R, K]``, ``scores [R, K]``.

    ``n_targets`` counts the next-item targets only: the KL term is a mean over the rows, added per target."""

    seq: SeqBatch
    prefix: Tensor
    candidates: Tensor
    scores: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DistillBatch:
        return DistillBatch(self.seq.to(device, non_blocking=non_blocking),
                            *(t.to(device, non_blocking=non_blocking) for t in (self.prefix, self.candidates,
                                                                                 self.scores)))

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def n_targets(self) -> int:
        return int((self.seq.target_ids > 0).sum())


class DistillTask:
    """The next-item loss of ``batch.seq`` plus ``alpha * T^2 * mean KL`` over ``batch``'s teacher rows.

    One forward over the sequences and the prefixes together (DDP synchronises once per forward)."""

    def __init__(self, model: nn.Module, loss: nn.Module, kd: KDConfig, *, seed: int = 0) -> None:
        self.model, self.loss, self.kd = model, loss, kd
        self.core: SequenceRecommender = getattr(model, "module", model)
        self.sampling = SeededGenerator(seed)

    def step_loss(self, batch: DistillBatch) -> tuple[Tensor, dict[str, Tensor]]:
        seq, rows = batch.seq, batch.prefix.shape[0]
        if seq.input_ids.shape[1] != batch.prefix.shape[1] and rows:
            raise ValueError(f"teacher prefixes have width {batch.prefix.shape[1]}, the sequences "
                             f"{seq.input_ids.shape[1]}: recompute the targets with the student's data.max_len")
        hidden = self.model(torch.cat([seq.input_ids, batch.prefix]) if rows else seq.input_ids)  # [B + R, L, D]
        has_target = seq.target_ids != 0
        targets = seq.target_ids[has_target]  # [M]; none on a rank's empty share of a short batch
        main = empty_shard_safe(self.loss(self.core, hidden[: len(seq)][has_target], targets,
                                          self.sampling.on(hidden.device)), targets.numel())
        kd = main.new_zeros(())
        if rows:
            student = candidate_scores(self.core, hidden[len(seq):, -1], batch.candidates)
            kd = distillation_loss(student, batch.scores, batch.candidates > 0, self.kd.temperature).mean()
        aux, stats = main.new_zeros(()), {}
        if isinstance(self.core, AuxiliaryOutputs):
            aux = self.core.auxiliary_loss()
            stats.update(self.core.auxiliary_stats())
        total = main + aux + self.kd.alpha * kd
        stats.update(loss=total.detach(), loss_main=main.detach(), loss_kd=kd.detach(), loss_aux=aux.detach(),
                     kd_rows=torch.tensor(float(rows)), n_targets=has_target.sum().detach())
        return total, stats

    def state_dict(self) -> dict[str, Any]:
        return self.sampling.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampling.load_state_dict(state)


class DistillEpochs:
    """``SequenceEpochs`` with teacher rows added to every micro-batch: a permutation of the rows per
    epoch (seeded by epoch alone, so a resumed run sees the same rows), sliced by the micro-batch's
    global index and sharded across ranks like the sequences."""

    def __init__(self, sequences: SequenceEpochs, targets: TeacherTargets, kd: KDConfig, config: TrainConfig,
                 ctx: DistContext) -> None:
        self.sequences, self.targets, self.ctx = sequences, targets, ctx
        self.seed, self.grad_accum = config.seed, config.grad_accum
        micro_per_epoch = max(len(sequences.loader), 1)
        rows = len(targets) if kd.alpha > 0 else 0
        per_step = kd.rows_per_step if kd.rows_per_step is not None else math.ceil(rows / micro_per_epoch) * \
            self.grad_accum
        self.per_micro = 0 if not rows else max(1, math.ceil(per_step / self.grad_accum))

    @property
    def steps_per_epoch(self) -> int:
        return self.sequences.steps_per_epoch

    def epoch(self, epoch: int, start: int) -> Iterator[list[DistillBatch]]:
        n = len(self.targets)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 7919 * (epoch + 1)))
        for b, group in enumerate(self.sequences.epoch(epoch, start), start=start):
            out = []
            for j, seq in enumerate(group):
                first = (b * self.grad_accum + j) * self.per_micro
                rows = order[(first + torch.arange(self.per_micro)) % max(n, 1)][self.ctx.rank :: self.ctx.world_size]
                t = self.targets
                out.append(DistillBatch(seq, t.prefix[rows], t.candidates[rows], t.scores[rows]))
            yield out

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        return self.sequences.throughput(stats, world_size)


# -- agreement with the teacher --------------------------------------------------------------------------
@torch.inference_mode()
def teacher_agreement(model: nn.Module, targets: TeacherTargets, temperature: float, *, batch_size: int = 512,
                      device: torch.device | str = "cpu") -> dict[str, float]:
    """How closely ``model`` ranks each row's candidates like the teacher: mean Kendall tau (tau-a over valid
    pairs), mean 0-based rank of the teacher's top candidate in the model's order, and the mean KD term."""
    model.eval()
    core: SequenceRecommender = getattr(model, "module", model)
    taus, ranks, kls = [], [], []
    for lo in range(0, len(targets), batch_size):
        sel = slice(lo, lo + batch_size)
        cand, teach = targets.candidates[sel].to(device), targets.scores[sel].to(device).float()
        student = candidate_scores(core, core.encode_users(targets.prefix[sel].to(device)), cand).float()
        valid = cand > 0
        kls.append(distillation_loss(student, teach, valid, temperature))
        taus.append(kendall_tau(student, teach, valid))
        best = teach.masked_fill(~valid, -torch.inf).argmax(dim=1, keepdim=True)
        above = (student > student.gather(1, best)) & valid
        ranks.append(above.sum(dim=1).float())
    return {"kd_loss": float(torch.cat(kls).mean()), "kendall_tau": float(torch.cat(taus).mean()),
            "teacher_top1_rank": float(torch.cat(ranks).mean())}


def kendall_tau(a: Tensor, b: Tensor, valid: Tensor) -> Tensor:
    """``[R]`` Kendall tau-a between the rows of ``a`` and ``b`` ``[R, K]`` over pairs of valid entries."""
    sa = torch.sign(a[:, :, None] - a[:, None, :])
    sb = torch.sign(b[:, :, None] - b[:, None, :])
    pair = valid[:, :, None] & valid[:, None, :]
    pair = pair & ~torch.eye(a.shape[1], dtype=torch.bool, device=a.device)
    return (sa * sb * pair).sum(dim=(1, 2)) / pair.sum(dim=(1, 2)).clamp(min=1)


# -- the run ---------------------------------------------------------------------------------------------
def targets_for(config: DistillConfig, data_dir: str | Path, teacher: Teacher | str | Path | None, out: Path,
                data: InteractionData, split: Split, manifest_sha: str) -> TeacherTargets:
    """The run's teacher targets: the file at ``targets.path`` (default ``out/teacher.safetensors``) when it
    exists and fits this data and config, else computed there with ``teacher``."""
    path = Path(config.targets.path) if config.targets.path is not None else out / TARGETS_FILE
    retriever = config.targets.retriever_run or config.init_run
    if not path.is_file():
        if teacher is None:
            raise ValueError(f"{path}: no teacher targets; pass a teacher (an LLM run or a scorer) to compute them")
        return compute_targets(config.targets, data_dir, teacher, path, retriever_run=retriever,
                               max_len=config.data.max_len, device=config.train.device)
    targets = TeacherTargets.load(path)
    want = {"k": config.targets.n_candidates, "positions_per_user": config.targets.positions_per_user,
            "max_users": config.targets.max_users, "seed": config.targets.seed, "max_len": config.data.max_len,
            "retriever_run": str(Path(retriever).resolve())}
    if teacher is not None:
        want["teacher"] = teacher_name(teacher)
    differs = {k: (targets.meta.get(k), v) for k, v in want.items() if targets.meta.get(k) != v}
    if differs:
        key, (have, asked) = next(iter(differs.items()))
        raise TargetsError(f"{path}: made with {key}={have!r}, this run asks for {asked!r}; point targets.path "
                           "elsewhere (or delete the file) to recompute")
    targets.check_data(data_dir, split, manifest_sha, data.n_items)
    return targets


def student_model(config: DistillConfig, data: InteractionData, manifest_sha: str) -> tuple[nn.Module, RunModel]:
    """``init_run``'s best weights (refused when trained on other data or on shorter sequences), else a
    fresh ``[model]`` (default SASRec) sized from the data."""
    if config.init_run is not None:
        model, spec = load_run_model(config.init_run, data, manifest_sha)
        if spec.max_len < config.data.max_len:
            raise ValueError(f"data.max_len {config.data.max_len} exceeds init_run's model max_len {spec.max_len}; "
                             "lower data.max_len")
        return model, spec
    section = config.model or ModelSection()
    side = genre_features(data) if section.use_item_features else None
    spec = RunModel.resolve(section, data_max_len=config.data.max_len, n_items=data.n_items,
                            n_side_features=None if side is None else side.shape[1])
    refuse_context_inputs(spec.config, "[model]")
    return spec.build(item_features=side), spec


def distill(config: DistillConfig, data_dir: str | Path | None, teacher: Teacher | str | Path | None,
            out: str | Path, *, resume: bool = True) -> dict[str, Any]:
    """Train a student with the teacher's soft targets; writes a ``seekrec train``-style run directory at
    ``out`` (config, model, catalog, metrics, best weights, results) and returns the results record.

    ``teacher``: a fine-tuned LLM run directory, any ``(History, items) -> scores`` callable, or None when
    the targets file already exists (``targets.path``). Resumes from ``out``'s checkpoint when ``resume``."""
    start = time.perf_counter()
    data_dir = data_dir if data_dir is not None else config.data.path
    if data_dir is None:
        raise ValueError("no dataset: pass data_dir or set data.path in the config")
    out = Path(out)
    run = RunDir(out)
    ctx = init_distributed(config.train.device, config.train.dist_timeout_s)
    try:
        torch.manual_seed(config.train.seed)
        data, split = load_split(data_dir, config.data.split)
        if split.name != "leave_one_out":
            raise ValueError("data.split: distillation reads leave_one_out training rows; set data.split = "
                             "\"leave_one_out\"")
        manifest_sha = sha256_file(Path(data_dir) / "manifest.json")
        model, spec = student_model(config, data, manifest_sha)
        targets = targets_for(config, data_dir, teacher, out, data, split, manifest_sha) if ctx.is_main else None
        barrier(ctx)  # other ranks read what the main rank computed or checked
        if targets is None:
            targets = TeacherTargets.load(Path(config.targets.path or out / TARGETS_FILE))
        loss = build_loss(config.loss, data.n_items, item_counts=item_counts(split.train.items, data.n_items))
        dataset = SequenceDataset(split.train, config.data.max_len, stride=config.data.stride)
        section_dict = {"name": spec.name, "use_item_features": spec.use_item_features,
                        **{k: v for k, v in spec.config.items() if k not in ("n_items", "n_side_features")}}
        record_config = {**config.to_dict(), "model": section_dict, "teacher": targets.meta.get("teacher"),
                         "data_manifest_sha256": manifest_sha, "data_source": read_manifest(data_dir)["source"]}
        if ctx.is_main:
            run.write_config(record_config)
            run.write_model(spec)
            run.write_catalog(Catalog.from_data(data.item_ids, data.interactions()[1]))
        dev = ctx.device
        initial = teacher_agreement(model.to(dev), targets, config.distill.temperature, device=dev) \
            if config.init_run is not None else None

        def ranking(which: str) -> Callable[[], dict[str, float]]:
            scorer, eval_set = ModelScorer(model, config.data.max_len), split.eval_set(which)
            return lambda: evaluate(scorer, eval_set, data.n_items, batch_size=config.train.eval_batch_size,
                                    device=dev).metrics

        batches = DistillEpochs(SequenceEpochs(dataset, config.train, ctx), targets, config.distill, config.train, ctx)
        trainer = Trainer(model, lambda m: DistillTask(m, loss, config.distill, seed=config.train.seed), batches,
                          ranking("valid"), config.train, run_dir=run, ctx=ctx, resume=resume,
                          manifest={"config": record_config, "data_manifest_sha256": manifest_sha},
                          validate_untrained=config.init_run is not None, test=ranking("test"))
        log.info("%s: %d sequences, %d teacher rows (%d per micro-batch), alpha %g, T %g", config.name, len(dataset),
                 len(targets), batches.per_micro, config.distill.alpha, config.distill.temperature)
        result = trainer.fit()
        final = teacher_agreement(model, targets, config.distill.temperature, device=dev)
        record = fit_record(
            result, source=data.source, model=spec.name, n_test=len(split.test), n_items=data.n_items,
            seconds=time.perf_counter() - start, name=config.name, world_size=ctx.world_size, loss=config.loss.name,
            precision=config.train.precision,
            distill={"alpha": config.distill.alpha, "temperature": config.distill.temperature,
                     "teacher": targets.meta.get("teacher"), "rows": len(targets), "k": targets.meta.get("k"),
                     "rows_per_micro_batch": batches.per_micro, "init_run": config.init_run,
                     "targets_seconds": targets.meta.get("seconds"),
                     "agreement": {k: round(v, 4) for k, v in final.items()},
                     **({"agreement_init": {k: round(v, 4) for k, v in initial.items()}} if initial else {})},
        )
        if ctx.is_main:
            run.write_results(record)
        return record
    finally:
        shutdown(ctx)

