"""Honest model selection and a paired test: choose on validation, confirm on more seeds, test per user.

A study TOML (``benchmarks/studies/ml100k.toml``) lists candidates, each a ``label``, a ``family``, a
``config`` (relative to the repository root) and ``overrides``, and the two families to ``compare``
(challenger first). Three stages:

  (a) every candidate trains on --select-seeds; per family the candidate with the best MEAN VALIDATION
      NDCG@10 is chosen (results.json "valid"); the test set never influences the choice;
  (b) the chosen candidate of each family trains on --final-seeds (stage-(a) runs are reused);
  (c) each final run's best weights are reloaded and ranked on the test split to get per-user ranks
      (their NDCG@10 must equal the run's results.json test metric within 1e-6), then the two families
      are compared per user: seeds averaged per user, mean difference, 95% CI, paired t and Wilcoxon p.

Runs live in ``{--work}/{label}/seed{S}``; a run whose results.json exists is reused, not retrained,
after checking that its config.json is the study's config + overrides + train.seed=S and its data
manifest is --data's. Writes JSON (--out), a markdown table on stdout and optionally a PNG.

    python benchmarks/tune.py --study benchmarks/studies/ml100k.toml --work runs/tune --dry-run
    python benchmarks/tune.py --study benchmarks/studies/ml100k.toml --work runs/tune --jobs 2 \\
        --out benchmarks/results/tune_ml100k.json --png docs/tune_ml100k.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SELECT_METRIC = "ndcg@10"
KEYS = ("ndcg@10", "hr@10")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_EXTRAS = ("data_manifest_sha256", "data_source")  # what config.json adds to the experiment config
TOLERANCE = 1e-6  # results.json rounds metrics to 6 decimals

log = logging.getLogger("tune")


# -- the study ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    label: str  # filesystem-safe: the run directory's name
    family: str
    config: Path  # absolute
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    name: str
    candidates: tuple[Candidate, ...]
    compare: tuple[str, str]  # (challenger family, reference family)

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(c.family for c in self.candidates))

    def candidate(self, label: str) -> Candidate:
        return next(c for c in self.candidates if c.label == label)


def read_study(path: Path, root: Path = ROOT) -> Study:
    """The study TOML, validated: labels unique and filesystem-safe, configs existing, overrides
    ``key=value`` strings, ``compare`` two distinct families that have candidates."""
    from seekrec.io import read_toml

    doc = read_toml(path)
    unknown = set(doc) - {"name", "compare", "candidates"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; valid: name, compare, candidates")
    rows = doc.get("candidates")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: no [[candidates]]; add at least one per family to compare")
    candidates: list[Candidate] = []
    for i, row in enumerate(rows):
        where = f"{path}: candidates[{i}]"
        extra = set(row) - {"label", "family", "config", "overrides"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; valid: label, family, config, overrides")
        for key in ("label", "family", "config"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise ValueError(f"{where}: {key!r} must be a non-empty string")
        label = row["label"]
        if not LABEL_PATTERN.fullmatch(label) or label in (".", ".."):
            raise ValueError(f"{where}: label {label!r} is not filesystem-safe; use letters, digits, '.', '_', '-' "
                             "(at most 64, not starting with '.', '_' or '-')")
        if any(c.label == label for c in candidates):
            raise ValueError(f"{where}: label {label!r} is used twice; labels name run directories")
        overrides = row.get("overrides", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise ValueError(f"{where}: overrides must be a list of 'section.key=value' strings, got {overrides!r}")
        if any(o.startswith("train.seed=") for o in overrides):
            raise ValueError(f"{where}: train.seed is set per run by --select-seeds / --final-seeds; drop it")
        config = Path(row["config"]) if Path(row["config"]).is_absolute() else root / row["config"]
        if not config.is_file():
            raise ValueError(f"{where}: config {row['config']!r} not found (relative paths start at {root})")
        candidates.append(Candidate(label, row["family"], config, tuple(overrides)))
    compare = doc.get("compare")
    families = {c.family for c in candidates}
    if not (isinstance(compare, list) and len(compare) == 2 and compare[0] != compare[1]
            and all(f in families for f in compare)):
        raise ValueError(f"{path}: compare must be two different families with candidates, e.g. "
                         f"[\"challenger\", \"reference\"]; families: {sorted(families)}, got {compare!r}")
    return Study(str(doc.get("name", path.stem)), tuple(candidates), (compare[0], compare[1]))


# -- runs: where they are, whether they can be reused ------------------------------------------------
def run_path(work: Path, label: str, seed: int) -> Path:
    return work / label / f"seed{seed}"


def expected_config(candidate: Candidate, seed: int) -> dict[str, Any]:
    """The experiment config ``seekrec train`` builds for this candidate and seed, as JSON."""
    from seekrec.training.experiment import ExperimentConfig

    config = ExperimentConfig.load(candidate.config, [*candidate.overrides, f"train.seed={seed}"])
    return json.loads(json.dumps(config.to_dict()))


def run_state(candidate: Candidate, seed: int, work: Path, manifest_sha: str | None) -> str:
    """``"reuse"`` (finished, its config.json is the candidate's and its data --data's), ``"train"`` (no
    run) or ``"partial"`` (a directory without results.json: training resumes or restarts it).
    ValueError if a finished run was trained otherwise: reusing it would mislabel its results."""
    from seekrec.training.run_dir import RunDir

    path = run_path(work, candidate.label, seed)
    run = RunDir(path)
    if not run.finished:
        return "partial" if path.exists() else "train"
    stored = run.read_config()
    if manifest_sha is not None and stored.get("data_manifest_sha256") != manifest_sha:
        raise ValueError(f"{run.config_file}: trained on other data (manifest sha256 "
                         f"{stored.get('data_manifest_sha256')}, --data has {manifest_sha}); pass its --data or "
                         "another --work")
    want = expected_config(candidate, seed)
    diffs = config_diff(want, normalised_config({k: v for k, v in stored.items() if k not in RUN_EXTRAS}))
    if diffs:
        raise ValueError(f"{run.config_file}: not the run of {candidate.label!r} seed {seed} "
                         f"({'; '.join(diffs[:5])}); fix the study's config/overrides or move {path} away")
    return "reuse"


def normalised_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored config read back through today's loader: a field added since the run was trained
    takes its default (the behaviour the run had), so it does not count as a difference."""
    from seekrec.training.experiment import ExperimentConfig

    try:
        return json.loads(json.dumps(ExperimentConfig.from_dict(stored).to_dict()))
    except (TypeError, ValueError):
        return stored  # a field removed since: compared as stored, so the difference is named


def config_diff(want: Any, got: Any, prefix: str = "") -> list[str]:
    """``key: study X, run Y`` for every leaf where two JSON config trees differ."""
    if isinstance(want, dict) and isinstance(got, dict):
        out: list[str] = []
        for key in sorted(set(want) | set(got), key=str):
            where = f"{prefix}.{key}" if prefix else str(key)
            out += config_diff(want.get(key, "<absent>"), got.get(key, "<absent>"), where)
        return out
    return [] if want == got else [f"{prefix}: study {want!r}, run {got!r}"]


def train_run(candidate: Candidate, seed: int, data: Path, work: Path, threads: int) -> None:
    """``seekrec train`` in a subprocess with ``threads`` torch threads; its output goes to ``seed{S}.log``."""
    out = run_path(work, candidate.label, seed)
    cmd = [sys.executable, "-m", "seekrec.cli", "train", "--config", str(candidate.config), "--data", str(data),
           "--out", str(out), f"train.seed={seed}", *candidate.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / f"seed{seed}.log").write_text(" ".join(cmd) + "\n" + proc.stdout[-5000:] + proc.stderr[-20000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{candidate.label} seed {seed} failed (exit {proc.returncode}); "
                           f"see {out.parent / f'seed{seed}.log'}:\n{proc.stderr[-2000:]}")
    log.info("trained %s seed %d in %.0f s", candidate.label, seed, time.time() - start)


def ensure_runs(jobs: Sequence[tuple[Candidate, int]], states: dict[tuple[str, int], str], data: Path, work: Path,
                n_jobs: int, threads: int, *, retrain_partial: bool = False) -> None:
    """Train every job not marked ``reuse``, ``n_jobs`` at a time; the first failure is raised. A ``partial``
    run (a directory without results.json) may be another process's run in progress: ValueError before
    anything trains unless ``retrain_partial``."""
    todo = [(c, s) for c, s in jobs if states[(c.label, s)] != "reuse"]
    partial = [str(run_path(work, c.label, s)) for c, s in todo if states[(c.label, s)] == "partial"]
    if partial and not retrain_partial:
        raise ValueError(f"{', '.join(partial)}: unfinished (no results.json); another process may be training "
                         "them: wait for it, remove them, or pass --retrain-partial to train them here")
    if not todo:
        return
    log.info("training %d run(s), %d at a time", len(todo), n_jobs)
    with ThreadPoolExecutor(n_jobs) as pool:
        for future in [pool.submit(train_run, c, s, data, work, threads) for c, s in todo]:
            future.result()
    for c, s in todo:
        states[(c.label, s)] = "reuse"


def read_row(candidate: Candidate, seed: int, work: Path, reused: bool) -> dict[str, Any]:
    """One finished run's summary: validation and test NDCG@10 / HR@10, best epoch, seconds to best."""
    from seekrec.training.run_dir import RunDir

    path = run_path(work, candidate.label, seed)
    record = RunDir(path).read_results()
    valid = record.get("valid") or {}
    if SELECT_METRIC not in valid:
        raise ValueError(f"{path}/results.json: no valid {SELECT_METRIC}; the run never validated, so it cannot "
                         "be chosen on validation")
    return {
        "label": candidate.label, "family": candidate.family, "seed": seed, "dir": f"{candidate.label}/seed{seed}", "reused": reused,
        **{f"valid_{k}": valid.get(k, math.nan) for k in KEYS},
        **{f"test_{k}": record["metrics"][k] for k in KEYS},
        "best_epoch": record.get("best_epoch"), "epochs": record.get("epochs"),
        "seconds_to_best": record.get("seconds_to_best", record["seconds"]),
        "train_seconds": record.get("train_seconds", record["seconds"]),
        "moe_max_load_ratio": router_load(path, record.get("best_epoch")),
    }


def router_load(path: Path, best_epoch: int | None) -> float | None:
    """Mean worst-expert share over its fair share (1 = balanced) over the training steps of the epoch
    that ended at the chosen checkpoint, from the run's metrics log; None for models without a router."""
    loads = []
    with (path / "metrics.jsonl").open() as lines:
        for line in lines:
            row = json.loads(line)
            if row.get("kind") == "train" and "moe_max_load_ratio" in row and (
                    best_epoch is None or row.get("epoch", 0) == best_epoch - 1):
                loads.append(row["moe_max_load_ratio"])
    return statistics.fmean(loads) if loads else None


# -- selection ---------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of one candidate's rows."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for split in ("valid", "test"):
        for k in KEYS:
            out[f"{split}_{k}"] = mean_std([r[f"{split}_{k}"] for r in rows])
    out["seconds_to_best"] = mean_std([r["seconds_to_best"] for r in rows])
    loads = [r["moe_max_load_ratio"] for r in rows if r.get("moe_max_load_ratio") is not None]
    out["moe_max_load_ratio"] = mean_std(loads) if loads else None
    out["best_epoch"] = mean_std([r["best_epoch"] for r in rows if r["best_epoch"] is not None] or [math.nan])
    return out


def choose(valid_by_label: dict[str, Sequence[float]], family_of: dict[str, str]) -> dict[str, str]:
    """Per family, the label with the highest mean validation score; a tie keeps the first label given.
    Only validation enters: test metrics are not an argument."""
    best: dict[str, tuple[float, str]] = {}
    for label, values in valid_by_label.items():
        if not values:
            raise ValueError(f"{label}: no validation results to choose on")
        score = statistics.fmean(values)
        if math.isnan(score):
            raise ValueError(f"{label}: validation {SELECT_METRIC} is NaN")
        family = family_of[label]
        if family not in best or score > best[family][0]:
            best[family] = (score, label)
    return {family: label for family, (_, label) in best.items()}


# -- stage (c): per-user test ranks --------------------------------------------------------------------
class TestRanker:
    """Reloads a run's best weights and ranks every test user's target, as ``seekrec train`` did."""

    def __init__(self, data: Path, device: str) -> None:
        self.data, self.device = data, device
        self._splits: dict[str, Any] = {}

    def per_user(self, path: Path) -> Any:
        """``PerUser`` test NDCG@10 of the run at ``path``; RuntimeError unless its mean equals results.json."""
        from seekrec.data.splits import load_split
        from seekrec.evaluation.ranking import ModelScorer, evaluate
        from seekrec.evaluation.significance import PerUser, ndcg_per_user
        from seekrec.training.run_dir import RunDir, required

        run = RunDir(path)
        config = run.read_config()
        data_cfg = required(config, "data", run.config_file)
        split_name = data_cfg.get("split", "leave_one_out")
        if split_name not in self._splits:
            self._splits[split_name] = load_split(self.data, split_name)
        data, split = self._splits[split_name]
        spec = run.read_model()
        if spec.n_items != data.n_items:
            raise RuntimeError(f"{run.model_file}: {spec.n_items} items, {self.data} has {data.n_items}")
        # item-feature buffers (model.use_item_features) are part of the saved weights: load_best fills them
        model = run.load_best(spec.build()).to(self.device).eval()
        # the batch size of the run's own test evaluation: the same sums, the same ties
        batch_size = int(config.get("train", {}).get("eval_batch_size", 512))
        result = evaluate(ModelScorer(model, int(data_cfg["max_len"])), split.test, data.n_items,
                          batch_size=batch_size, device=self.device)
        stored = run.read_results()["metrics"][SELECT_METRIC]
        if abs(result.metrics[SELECT_METRIC] - stored) > TOLERANCE:
            raise RuntimeError(f"{path}: recomputed test {SELECT_METRIC} {result.metrics[SELECT_METRIC]:.7f} differs "
                               f"from results.json {stored:.6f} by more than {TOLERANCE}: the reloaded model, data "
                               "or split is not the one the run was tested with")
        return PerUser(split.test.users, ndcg_per_user(result.ranks, 10))


# -- the study, end to end -------------------------------------------------------------------------
def plan(study: Study, work: Path, select_seeds: Sequence[int], final_seeds: Sequence[int],
         manifest_sha: str | None) -> tuple[list[tuple[Candidate, int]], dict[tuple[str, int], str]]:
    """Stage-(a) jobs and the state of every run either stage could use (existing dirs only for stage b)."""
    jobs = [(c, s) for c in study.candidates for s in select_seeds]
    states = {(c.label, s): run_state(c, s, work, manifest_sha) for c in study.candidates
              for s in dict.fromkeys([*select_seeds, *final_seeds])}
    return jobs, states


def print_plan(study: Study, states: dict[tuple[str, int], str], work: Path, select_seeds: Sequence[int],
               final_seeds: Sequence[int]) -> None:
    """What a run would do: every run to train or to reuse (stage b only once stage a has finished)."""
    words = {"reuse": "reused", "train": "to train", "partial": "unfinished (no results.json): in progress elsewhere? "
             "--retrain-partial trains it here"}
    print(f"study {study.name}: {len(study.candidates)} candidates, families {study.families}, "
          f"compare {study.compare[0]} vs {study.compare[1]}; runs under {work}")
    print("stage (a) selection runs:")
    for c in study.candidates:
        for s in select_seeds:
            print(f"  {c.label:<20} seed {s}: {words[states[(c.label, s)]]}")
    if any(states[(c.label, s)] != "reuse" for c in study.candidates for s in select_seeds):
        print(f"stage (b): the validation-best candidate per family on seeds {list(final_seeds)}; which runs "
              "are needed is known once stage (a) has finished")
        return
    valid = {c.label: [read_row(c, s, work, True)[f"valid_{SELECT_METRIC}"] for s in select_seeds]
             for c in study.candidates}
    chosen = choose(valid, {c.label: c.family for c in study.candidates})
    print("stage (b) final runs (choice made from the finished stage-(a) runs):")
    for family, label in chosen.items():
        for s in final_seeds:
            print(f"  {label:<20} seed {s}: {words[states[(label, s)]]}")


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from seekrec.evaluation.significance import paired_comparison
    from seekrec.io import sha256_file

    study = read_study(args.study)
    manifest_sha = sha256_file(args.data / "manifest.json")
    select_seeds, final_seeds = list(dict.fromkeys(args.select_seeds)), list(dict.fromkeys(args.final_seeds))
    jobs, states = plan(study, args.work, select_seeds, final_seeds, manifest_sha)
    if args.dry_run:
        print_plan(study, states, args.work, select_seeds, final_seeds)
        return {}
    reused = {key for key, state in states.items() if state == "reuse"}
    start = time.time()
    # (a) selection on validation
    ensure_runs(jobs, states, args.data, args.work, args.jobs, args.threads, retrain_partial=args.retrain_partial)
    rows = [read_row(c, s, args.work, (c.label, s) in reused) for c, s in jobs]
    ablation = {c.label: {"family": c.family, "config": str(c.config.relative_to(ROOT) if c.config.is_relative_to(ROOT)
                                                             else c.config),
                          "overrides": list(c.overrides), **summarize([r for r in rows if r["label"] == c.label])}
                for c in study.candidates}
    chosen = choose({label: [r[f"valid_{SELECT_METRIC}"] for r in rows if r["label"] == label] for label in ablation},
                    {c.label: c.family for c in study.candidates})
    log.info("chosen on validation: %s", chosen)
    # (b) the chosen candidates on the final seeds
    final_jobs = [(study.candidate(label), s) for label in chosen.values() for s in final_seeds]
    ensure_runs(final_jobs, states, args.data, args.work, args.jobs, args.threads,
                retrain_partial=args.retrain_partial)
    final_rows = [read_row(c, s, args.work, (c.label, s) in reused) for c, s in final_jobs]
    # (c) per-user test NDCG@10 of every final run, then the paired comparison
    import torch

    torch.set_num_threads(args.threads)
    ranker = TestRanker(args.data, args.device)
    per_user = {family: [ranker.per_user(run_path(args.work, label, s)) for s in final_seeds]
                for family, label in chosen.items()}
    a, b = study.compare
    comparison = paired_comparison(per_user[a], per_user[b], name_a=chosen[a], name_b=chosen[b])
    final = {family: {"label": label, **summarize([r for r in final_rows if r["label"] == label])}
             for family, label in chosen.items()}
    return {
        "command": "python " + " ".join(sys.argv),
        "study": study.name,
        "study_file": str(args.study),
        "data": args.data.name,  # the directory's name: no machine path in a committed result
        "data_manifest_sha256": manifest_sha,
        "protocol": (f"choice per family by mean validation {SELECT_METRIC} over seeds {select_seeds} (test never "
                     f"used); final settings on seeds {final_seeds}; test metrics of each run's best validation "
                     "checkpoint; paired comparison of per-user test NDCG@10, seeds averaged per user"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jobs": args.jobs,
                    "threads_per_job": args.threads},
        "wall_seconds": round(time.time() - start, 1),
        "select_seeds": select_seeds,
        "final_seeds": final_seeds,
        "ablation": ablation,
        "chosen": chosen,
        "final": final,
        "compare": [a, b],
        "paired_test": comparison.to_dict(),
        "runs": rows,
        "final_runs": final_rows,
    }


# -- reporting ------------------------------------------------------------------------------------------
def _pm(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def _load(s: dict[str, Any]) -> str:
    return "–" if s.get("moe_max_load_ratio") is None else f"{s['moe_max_load_ratio']['mean']:.2f}"


def markdown(result: dict[str, Any]) -> str:
    chosen = set(result["chosen"].values())
    lines = [f"Selection on validation, seeds {result['select_seeds']} (* = chosen for its family)", "",
             "| candidate | family | valid NDCG@10 | test NDCG@10 | test HR@10 | best epoch | s to best | "
             "router max load |", "|---|---|---|---|---|---|---|---|"]
    for label, s in result["ablation"].items():
        lines.append(f"| {label}{' *' if label in chosen else ''} | {s['family']} | {_pm(s['valid_ndcg@10'])} | "
                     f"{_pm(s['test_ndcg@10'])} | {_pm(s['test_hr@10'])} | {s['best_epoch']['mean']:.1f} | "
                     f"{s['seconds_to_best']['mean']:.0f} | {_load(s)} |")
    lines += ["", f"Final settings, seeds {result['final_seeds']}", "",
              "| family | candidate | valid NDCG@10 | test NDCG@10 | test HR@10 | s to best |",
              "|---|---|---|---|---|---|"]
    for family, s in result["final"].items():
        lines.append(f"| {family} | {s['label']} | {_pm(s['valid_ndcg@10'])} | {_pm(s['test_ndcg@10'])} | "
                     f"{_pm(s['test_hr@10'])} | {s['seconds_to_best']['mean']:.0f} |")
    p = result["paired_test"]
    ci = f"{p['confidence']:.0%}"
    lines += ["", f"Paired per-user test NDCG@10 ({p['n_users']} users, seeds averaged per user)", "",
              f"| A vs B | A | B | A / B | A - B | {ci} CI | t-test p | Wilcoxon p | users A>B / A<B / tied |",
              "|---|---|---|---|---|---|---|---|---|",
              f"| {p['name_a']} vs {p['name_b']} | {p['mean_a']:.4f} | {p['mean_b']:.4f} | {p['ratio']:.3f}x | "
              f"{p['diff']:+.4f} | [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['t_pvalue']:.3g} | "
              f"{p['wilcoxon_pvalue']:.3g} | {p['n_a_better']} / {p['n_b_better']} / {p['n_tied']} |"]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Validation and test NDCG@10 (mean ± std over the selection seeds) per candidate, the final
    settings below; the paired test in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*result["ablation"], *(f"final: {s['label']}" for s in result["final"].values())]
    stats = [*result["ablation"].values(), *result["final"].values()]
    y = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.8))
    for offset, split, color in ((-0.2, "valid", "tab:gray"), (0.2, "test", "tab:blue")):
        ax.barh([i + offset for i in y], [s[f"{split}_ndcg@10"]["mean"] for s in stats], height=0.4,
                xerr=[s[f"{split}_ndcg@10"]["std"] for s in stats], color=color, alpha=0.8, label=split)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    p = result["paired_test"]
    ax.set(xlabel="NDCG@10 (full ranking, history masked; mean ± std over seeds)",
           title=f"{result['study']}: {p['name_a']} vs {p['name_b']} {p['ratio']:.3f}x, diff {p['diff']:+.4f} "
                 f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}], t p={p['t_pvalue']:.2g}, "
                 f"Wilcoxon p={p['wilcoxon_pvalue']:.2g}")
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=Path("benchmarks/studies/ml100k.toml"),
                        help="study TOML: candidates and the families to compare (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=Path("data/ml-100k"),
                        help="prepared dataset directory (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("runs/tune"),
                        help="run directories {work}/{label}/seed{S}; finished ones are reused (default: %(default)s)")
    parser.add_argument("--select-seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds every candidate trains on for the choice on validation (default: %(default)s)")
    parser.add_argument("--final-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="seeds of the chosen candidates for the final comparison (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per training process and for the test re-ranking (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="device for the test re-ranking (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_ml100k.json"),
                        help="JSON result (default: %(default)s)")
    parser.add_argument("--png", type=Path, help="bar chart of the study (default: none)")
    parser.add_argument("--retrain-partial", action="store_true",
                        help="train run directories that exist without results.json (resuming or restarting "
                             "them) instead of stopping: they may be another process's runs in progress "
                             "(default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the runs to train and to reuse, then stop (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if not (args.data / "manifest.json").is_file():
        parser.error(f"--data {args.data}: no manifest.json; prepare it with `seekrec data prepare`")
    args.data, args.work = args.data.resolve(), args.work.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = run_study(args)
    except ValueError as error:  # a study, reuse or data mistake: one line naming it
        parser.exit(2, f"tune.py: error: {error}\n")
    if args.dry_run:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.png)


if __name__ == "__main__":
    main()
