"""Distillation: the teacher-targets file (round trip, refusals), the KD loss, and that the KD term moves a
student's ranking of the candidates toward the teacher's; a tiny end-to-end run writes a loadable run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seekrec.data.simulator import Simulator, SimulatorConfig
from seekrec.data.splits import load_split
from seekrec.llm.distill import (
    DistillConfig,
    DistillEpochs,
    DistillTask,
    KDConfig,
    distill,
    distillation_loss,
    kendall_tau,
    teacher_agreement,
)
from seekrec.llm.teacher_targets import (
    TARGETS_FILE,
    TargetsConfig,
    TargetsError,
    TeacherTargets,
    compute_targets,
    sample_positions,
    sidecar,
)
from seekrec.models.factory import build_loss
from seekrec.models.losses import LossConfig
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext
from seekrec.training.experiment import ExperimentConfig, ModelSection, train_experiment
from seekrec.training.run_dir import RunDir, RunModel
from seekrec.training.step import count_targets
from seekrec.training.trainer import SequenceEpochs

RUN = ["data.max_len=20", "train.batch_size=64", "train.device=cpu", "train.warmup_steps=0", "train.max_epochs=2"]
TINY = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "model.dropout=0.0", *RUN]
MAX_LEN = 20
CPU = DistContext(0, 1, 0, torch.device("cpu"))


class PreferenceTeacher:
    """A synthetic teacher: every user prefers items by one fixed random score (unrelated to the data)."""

    name = "preference-teacher"

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.preference = np.random.default_rng(seed).normal(size=n_items + 1).astype(np.float32) * 3
        self.calls = 0

    def __call__(self, history, items: np.ndarray) -> np.ndarray:
        assert len(history.items) >= 1 and history.values is not None
        self.calls += 1
        return self.preference[items]


@pytest.fixture(scope="module")
def retriever_run(tmp_path_factory, sim_data_dir) -> Path:
    out = tmp_path_factory.mktemp("retriever") / "run"
    train_experiment(ExperimentConfig.load(None, TINY), sim_data_dir, out)
    return out


@pytest.fixture(scope="module")
def teacher(sim_data_dir) -> PreferenceTeacher:
    data, _ = load_split(sim_data_dir)
    return PreferenceTeacher(data.n_items)


@pytest.fixture(scope="module")
def targets_file(tmp_path_factory, sim_data_dir, retriever_run, teacher) -> Path:
    out = tmp_path_factory.mktemp("targets") / TARGETS_FILE
    compute_targets(TargetsConfig(n_candidates=10, positions_per_user=4), sim_data_dir, teacher, out,
                    retriever_run=retriever_run, max_len=MAX_LEN, device="cpu", progress=False)
    return out


# -- the loss ----------------------------------------------------------------------------------------------
def test_distillation_loss_is_t_squared_kl_over_valid_candidates():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    valid = torch.ones(4, 6, dtype=torch.bool)
    valid[1, 4:] = False  # padding candidates
    got = distillation_loss(student, teacher, valid, temperature=2.0)
    for r in range(4):
        s, t = student[r][valid[r]].double() / 2, teacher[r][valid[r]].double() / 2
        p = torch.softmax(t, 0)
        want = 4 * (p * (torch.log_softmax(t, 0) - torch.log_softmax(s, 0))).sum()
        assert got[r].item() == pytest.approx(want.item(), rel=1e-5)
    # padded entries carry no weight whatever their scores; a student equal to the teacher has zero loss
    student2 = student.clone()
    student2[1, 4:] = 1e4
    assert torch.allclose(distillation_loss(student2, teacher, valid, 2.0), got)
    assert distillation_loss(teacher, teacher, valid, 2.0).abs().max() < 1e-6
    student.requires_grad_(True)
    distillation_loss(student, teacher, valid, 2.0).sum().backward()
    assert torch.isfinite(student.grad).all() and (student.grad[1, 4:] == 0).all()


def test_kendall_tau_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    got = kendall_tau(a, b, torch.ones(5, 8, dtype=torch.bool))
    for r in range(5):
        assert got[r].item() == pytest.approx(stats.kendalltau(a[r].numpy(), b[r].numpy()).statistic, abs=1e-6)


# -- the targets file --------------------------------------------------------------------------------------
def test_positions_are_training_positions_with_a_prefix(sim_data_dir):
    _, split = load_split(sim_data_dir)
    users, positions = sample_positions(split.train, 3)
    lengths = split.train.lengths()
    assert (positions >= 1).all() and (positions < lengths[users]).all()  # never a valid / test event
    counts = np.bincount(users, minlength=len(lengths))
    assert (counts == np.clip(lengths - 1, 0, 3)).all()
    assert (positions[users == users[0]] == np.arange(lengths[users[0]] - counts[users[0]], lengths[users[0]])).all()
    few, few_positions = sample_positions(split.train, 3, max_users=7, seed=1)
    assert len(np.unique(few)) == 7 and (np.diff(few) >= 0).all()
    assert set(zip(few.tolist(), few_positions.tolist())) <= set(zip(users.tolist(), positions.tolist()))


def test_targets_round_trip_and_hold_the_teachers_scores(targets_file, sim_data_dir, teacher):
    targets = TeacherTargets.load(targets_file)
    data, split = load_split(sim_data_dir)
    assert targets.meta["teacher"] == teacher.name and targets.meta["k"] == 10 and targets.meta["max_len"] == MAX_LEN
    assert targets.meta["rows"] == len(targets) == teacher.calls > 0
    assert targets.prefix.shape == (len(targets), MAX_LEN) and targets.candidates.shape == (len(targets), 10)
    valid = targets.candidates > 0
    assert valid.all()  # 80 items: always 10 unseen
    assert torch.equal(targets.scores, torch.from_numpy(teacher.preference)[targets.candidates])
    for r in range(0, len(targets), 37):  # candidates are unseen in the (whole) prefix
        u, pos = int(targets.users[r]), int(targets.positions[r])
        seen = set(split.train.row(u)[:pos].tolist())
        assert not seen & set(targets.candidates[r].tolist())
    from seekrec.io import sha256_file

    targets.check_data(sim_data_dir, split, sha256_file(Path(sim_data_dir) / "manifest.json"), data.n_items)


def test_corrupted_or_unfinished_targets_are_refused(targets_file, tmp_path):
    copy = tmp_path / TARGETS_FILE
    raw = bytearray(targets_file.read_bytes())
    raw[-5] ^= 0xFF  # one flipped byte inside the scores
    copy.write_bytes(bytes(raw))
    sidecar(copy).write_bytes(sidecar(targets_file).read_bytes())
    with pytest.raises(TargetsError, match="corrupted"):
        TeacherTargets.load(copy)
    sidecar(copy).unlink()  # a kill between the tensors and the sidecar
    with pytest.raises(TargetsError, match="not written to the end"):
        TeacherTargets.load(copy)
    with pytest.raises(TargetsError, match="missing"):
        TeacherTargets.load(tmp_path / "nothing.safetensors")


def test_targets_from_another_dataset_are_refused(targets_file, tmp_path):
    other = tmp_path / "other"
    Simulator(SimulatorConfig(n_users=120, n_items=80, mean_events_per_user=25, seed=6)).generate().write(other)
    data, split = load_split(other)
    from seekrec.io import sha256_file

    targets = TeacherTargets.load(targets_file)
    with pytest.raises(TargetsError, match="another manifest"):
        targets.check_data(other, split, sha256_file(other / "manifest.json"), data.n_items)
    targets.meta["data_manifest_sha256"] = sha256_file(other / "manifest.json")  # a forged checksum still fails
    with pytest.raises(TargetsError, match="training rows"):
        targets.check_data(other, split, sha256_file(other / "manifest.json"), data.n_items)


def test_a_run_refuses_targets_made_with_other_settings(targets_file, sim_data_dir, retriever_run, tmp_path):
    config = DistillConfig.load(None, [*RUN, f"init_run={retriever_run}", f"targets.path={targets_file}",
                                       "targets.n_candidates=20"])
    with pytest.raises(TargetsError, match="k=10"):
        distill(config, sim_data_dir, None, tmp_path / "run")


# -- the student -------------------------------------------------------------------------------------------
def _train(targets: TeacherTargets, sim_data_dir, alpha: float, epochs: int = 3) -> dict[str, float]:
    """A fresh tiny SASRec trained ``epochs`` epochs with ``alpha``; its agreement with the teacher."""
    from seekrec.data.sequences import SequenceDataset
    from seekrec.training.step import TrainStep, build_optimizer

    torch.manual_seed(0)
    data, split = load_split(sim_data_dir)
    spec = RunModel.resolve(ModelSection.from_dict({"name": "sasrec", "dim": 16, "n_layers": 1, "dropout": 0.0}),
                            data_max_len=MAX_LEN, n_items=data.n_items)
    model = spec.build()
    train = TrainConfig(lr=5e-3, batch_size=64, warmup_steps=0, device="cpu", max_epochs=epochs)
    kd = KDConfig(alpha=alpha, temperature=1.0)
    batches = DistillEpochs(SequenceEpochs(SequenceDataset(split.train, MAX_LEN), train, CPU), targets, kd, train,
                            CPU)
    task = DistillTask(model, build_loss(LossConfig(), data.n_items), kd)
    optimizer = build_optimizer(model, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    step = TrainStep(model, task, optimizer, scheduler, train, CPU)
    for epoch in range(epochs):
        for group in batches.epoch(epoch, 0):
            assert count_targets(group[0]) == int((group[0].seq.target_ids > 0).sum())
            step(group)
    return teacher_agreement(model, targets, 1.0)


def test_kd_moves_the_students_ranking_toward_the_teachers(targets_file, sim_data_dir):
    targets = TeacherTargets.load(targets_file)
    plain, taught = _train(targets, sim_data_dir, 0.0), _train(targets, sim_data_dir, 2.0)
    assert taught["kendall_tau"] > plain["kendall_tau"] + 0.2, (plain, taught)
    assert taught["teacher_top1_rank"] < plain["teacher_top1_rank"], (plain, taught)
    assert taught["kd_loss"] < plain["kd_loss"]


def test_distill_batches_are_the_same_whatever_the_start(targets_file, sim_data_dir):
    from seekrec.data.sequences import SequenceDataset

    _, split = load_split(sim_data_dir)
    targets = TeacherTargets.load(targets_file)
    train = TrainConfig(batch_size=32, grad_accum=2, device="cpu")
    batches = DistillEpochs(SequenceEpochs(SequenceDataset(split.train, MAX_LEN), train, CPU), targets, KDConfig(),
                            train, CPU)
    whole = list(batches.epoch(1, 0))
    tail = list(batches.epoch(1, 2))
    assert len(whole) == batches.steps_per_epoch and len(tail) == len(whole) - 2
    for a, b in zip(whole[2:], tail):
        for x, y in zip(a, b):
            assert torch.equal(x.seq.input_ids, y.seq.input_ids) and torch.equal(x.candidates, y.candidates)
    seen = torch.cat([m.candidates for group in whole for m in group])
    assert len(seen) >= len(targets)  # every row at least once an epoch
    assert batches.per_micro == math.ceil(len(targets) / (2 * batches.steps_per_epoch))


def test_config_file_and_its_refusals(retriever_run):
    config = DistillConfig.load(Path(__file__).parents[2] / "configs" / "ml-100k-sasrec-distill.toml")
    assert config.init_run and config.distill.alpha == 1.0 and config.targets.n_candidates == 50
    with pytest.raises(ValueError, match="drop \\[model\\]"):
        DistillConfig.load(None, [f"init_run={retriever_run}", "model.name=sasrec"])
    with pytest.raises(ValueError, match="retriever_run"):
        DistillConfig.load(None, [])
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig.load(None, [f"init_run={retriever_run}", "distill.alpha=-1"])


@pytest.mark.slow
def test_distill_writes_a_run_that_loads_and_resumes(sim_data_dir, retriever_run, teacher, tmp_path):
    out = tmp_path / "student"
    overrides = [*RUN, f"init_run={retriever_run}", "targets.n_candidates=10", "targets.positions_per_user=2",
                 "distill.alpha=1.0", "train.lr=1e-3"]
    config = DistillConfig.load(None, overrides)
    record = distill(config, sim_data_dir, teacher, out)
    assert record["model"] == "sasrec" and {"ndcg@10", "hr@10"} <= set(record["metrics"]) \
        and "ndcg@10" in record["valid"]
    assert record["distill"]["agreement_init"] and record["distill"]["rows"] > 0
    run = RunDir(out)
    assert (out / TARGETS_FILE).is_file() and json.loads(run.results_file.read_text())["distill"]["alpha"] == 1.0
    from seekrec.registry.artifacts import read_run

    artifact = read_run(out)  # what `seekrec registry publish` reads
    assert artifact.model_name == "sasrec" and "test/ndcg@10" in artifact.metrics
    from seekrec.api import load

    data, _ = load_split(sim_data_dir)
    assert len(load(out).recommend([str(i) for i in data.item_ids.raw[:5]], k=5)) == 5
    calls = teacher.calls
    again = distill(config, sim_data_dir, None, out)  # resumes: the teacher is not asked again
    assert teacher.calls == calls and again["metrics"] == record["metrics"]


def _llm_run(out: Path, model_dir: Path, data_dir: Path, retriever_run: Path) -> Path:
    """An LLM ranker run as ``seekrec llm finetune`` leaves it with full weights (here: a random tiny DeepSeek-V3,
    untrained: the plumbing is under test, not the teacher)."""
    import dataclasses
    import shutil

    from seekrec.data.schema import InteractionData
    from seekrec.llm.prompts import ItemTexts, PromptConfig
    from seekrec.llm.rerank import FULL_DIR, LLMRunInfo, write_item_texts

    data = InteractionData.read(data_dir)
    shutil.copytree(model_dir, out / FULL_DIR)
    prompt = dataclasses.asdict(PromptConfig(max_history=3, token_budget=160))
    LLMRunInfo(str(model_dir), "causal", "full", prompt, weight=0.0, n_candidates=5, n_items=data.n_items,
               retriever_run=str(retriever_run), task="rerank").write(out)
    write_item_texts(out, ItemTexts.from_data(data))
    return out


@pytest.mark.slow
def test_an_llm_run_is_a_teacher(sim_data_dir, retriever_run, tiny_causal_dir, tmp_path):
    from seekrec.llm.examples import UserEvents
    from seekrec.llm.rerank import LLMReranker

    llm_run = _llm_run(tmp_path / "llm", tiny_causal_dir, sim_data_dir, retriever_run)
    out = tmp_path / TARGETS_FILE
    config = TargetsConfig(n_candidates=5, positions_per_user=2, max_users=3)
    targets = compute_targets(config, sim_data_dir, llm_run, out, retriever_run=retriever_run, max_len=MAX_LEN,
                              device="cpu", progress=False)
    assert targets.meta["teacher"] == str(llm_run.resolve()) and TeacherTargets.load(out).meta == targets.meta
    assert len(targets) == 6 and targets.scores.std() > 0
    data, _ = load_split(sim_data_dir)
    events, reranker = UserEvents.from_data(data), LLMReranker.load(llm_run)
    for r in range(len(targets)):  # the stored scores are the reranker's, on the same history
        history = events.history(int(targets.users[r]), int(targets.positions[r]))
        want = reranker.scores(history, targets.candidates[r].numpy())
        assert np.allclose(targets.scores[r].numpy(), want, atol=1e-4)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_student(sim_data_dir, retriever_run, targets_file, tmp_path, monkeypatch):
    overrides = [*TINY, f"targets.retriever_run={retriever_run}", f"targets.path={targets_file}",
                 "targets.n_candidates=10", "targets.positions_per_user=4", "train.checkpoint_every=1",
                 "loss.name=bce"]  # bce samples negatives: the task's generator must resume too
    config = DistillConfig.load(None, overrides)
    clean = distill(config, sim_data_dir, None, tmp_path / "clean")
    step_loss, calls = DistillTask.step_loss, []

    def dies_at_the_third_step(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return step_loss(self, batch)

    monkeypatch.setattr(DistillTask, "step_loss", dies_at_the_third_step)
    with pytest.raises(RuntimeError, match="killed"):
        distill(config, sim_data_dir, None, tmp_path / "resumed")
    monkeypatch.setattr(DistillTask, "step_loss", step_loss)
    resumed = distill(config, sim_data_dir, None, tmp_path / "resumed")
    assert resumed["metrics"] == clean["metrics"] and resumed["steps"] == clean["steps"]
    assert (tmp_path / "clean/best/model.safetensors").read_bytes() == \
        (tmp_path / "resumed/best/model.safetensors").read_bytes()


def test_students_and_retrievers_with_event_time_inputs_are_refused_at_load(sim_data_dir: Path) -> None:
    """Teacher rows are item-id prefixes: a model that needs event times could not be fed them."""
    from seekrec.data.schema import InteractionData
    from seekrec.llm.distill import student_model
    from seekrec.llm.teacher_targets import refuse_context_inputs

    refuse_context_inputs({"time_features": False, "relative_position_bias": True}, "fine")  # needs no times
    with pytest.raises(ValueError, match="run-x: the model uses event-time/action inputs \\(relative_time_bias\\)"):
        refuse_context_inputs({"relative_time_bias": True}, "run-x")
    config = DistillConfig.load(None, ["model.name=sasrec", "model.time_features=true", "targets.retriever_run=r"])
    with pytest.raises(ValueError, match="\\[model\\]: .*time_features.*trained without them"):
        student_model(config, InteractionData.read(sim_data_dir), "sha")
