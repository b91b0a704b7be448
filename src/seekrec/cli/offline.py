"""Offline commands: ``seekrec evaluate``, ``train``, ``recommend``, ``plot`` and ``pipeline train | evaluate``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seekrec.cli.options import HELP_FORMAT, add_config_options


def _parse_value(text: str) -> Any:
    """``key=value`` values: JSON where it parses (numbers, booleans, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_params(pairs: Sequence[str]) -> dict[str, Any] | None:
    if not pairs:
        return None
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param expects key=value, got {pair!r}")
        params[key] = _parse_value(value)
    return params


def _baseline_params(model: str, pairs: Sequence[str]) -> dict[str, Any] | None:
    """``--param`` values checked against the baseline's fields, so ``l3=5`` is named, not a TypeError."""
    import dataclasses
    import typing

    from seekrec.config import check_types
    from seekrec.evaluation.baselines import BASELINES

    params = _parse_params(pairs)
    if not params:
        return params
    cls = BASELINES[model]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init and hints[f.name] in (int, float, bool, str)]
    for key in params:
        if key not in valid:
            raise ValueError(f"--param {key}: {model} has no parameter {key!r}; "
                             f"{'valid: ' + ', '.join(valid) if valid else 'it takes none'}")
    try:
        check_types(cls, params)
    except ValueError as exc:
        raise ValueError(f"--param {exc}") from exc
    return params


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seekrec.evaluation.report import format_table, write_results
    from seekrec.evaluation.runner import evaluate_baseline

    record = evaluate_baseline(
        args.data, args.model, args.split, split=args.split_kind, params=_baseline_params(args.model, args.param),
        mask_history=not args.no_mask_history, progress=sys.stderr.isatty(),
    )
    if record["validation"]:
        print(f"chosen on validation: {record['params']}")
    print(format_table([record]))
    if args.json:
        write_results(args.json, record)
        print(f"wrote {args.json}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from seekrec.evaluation.report import format_table
    from seekrec.training.experiment import ExperimentConfig, train_experiment

    overrides = list(args.overrides)
    if args.deepspeed is not None:  # first, so a train.strategy override contradicting it is an error; JSON-quoted,
        # so a path is never parsed as a number
        overrides = ["train.strategy=deepspeed", f"train.deepspeed_config={json.dumps(str(args.deepspeed))}",
                     *overrides]
    config = ExperimentConfig.load(args.config, overrides)
    if args.config is None:  # a newcomer should know what they are training, and where to change it
        from seekrec.models.factory import build_model_config

        model = build_model_config(config.model.name, config.model.params, n_items=1)
        logging.getLogger("seekrec.cli").info(
            "no --config: using the ExperimentConfig defaults (model %s, dim %s, train.max_epochs %d, train.lr %g, "
            "train.batch_size %d, data.max_len %d); the run's config.json records them all; configs/*.toml are "
            "tuned per dataset", config.model.name, getattr(model, "dim", "-"), config.train.max_epochs,
            config.train.lr, config.train.batch_size, config.data.max_len)
    out = args.out if args.out is not None else Path("runs") / config.name
    try:
        record = train_experiment(config, args.data, out)
    except KeyboardInterrupt:
        from seekrec.training.run_dir import RunDir

        print(f"seekrec: interrupted; {RunDir(out).resume_hint() or 'nothing was saved yet'}", file=sys.stderr)
        return 130
    if record.get("world_size", 1) == 1 or _rank() == 0:
        print(f"best validation {config.train.select_metric} {record['valid'].get(config.train.select_metric, 0):.4f} "
              f"at epoch {record['best_epoch']}; test metrics of that checkpoint:")
        print(format_table([record]))
        print(f"run directory: {out}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from seekrec.api import export_all, load

    recommender = load(args.model, args.version, data=args.data, device=args.device)
    if args.all:
        if args.out is None:
            raise ValueError("--all writes a file: pass --out FILE.csv or FILE.parquet")
        users = export_all(recommender, args.out, args.k, args.batch_size, not args.include_seen,
                           progress=sys.stderr.isatty())
        print(f"wrote {args.out}: top {args.k} of {users:,} users from {recommender.version}")
        return 0
    target = args.user if args.user is not None else [i for i in (args.history or "").split(",") if i]
    if not target:
        raise ValueError("say whose recommendations: --user ID, --history ITEM,ITEM,... or --all --out FILE")
    for rank, (item, score) in enumerate(recommender.recommend(target, args.k, not args.include_seen), 1):
        print(f"{rank}\t{item}\t{score:.4f}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from seekrec.training.run_dir import RunDir

    print(f"wrote {RunDir(args.run_dir).plot(args.out)}")
    return 0


def cmd_pipeline_train(args: argparse.Namespace) -> int:
    from seekrec.pipeline.config import PipelineConfig
    from seekrec.pipeline.run import train_pipeline

    overrides = list(args.overrides) + ([f"sasrec_run={json.dumps(str(args.sasrec_run))}"] if args.sasrec_run else [])
    config = PipelineConfig.load(args.config, overrides)
    out = args.out if args.out is not None else Path("runs") / config.name
    record = train_pipeline(config, args.data, out).record
    din = record["din"]["report"]["test"]
    print(f"two-tower: valid recall@100 {record['two_tower']['valid']['recall@100']:.4f} at epoch "
          f"{record['two_tower']['best_epoch']}; DIN: test AUC {din['raw']['auc']:.4f}, logloss "
          f"{din['raw']['logloss']:.4f} -> {din['calibrated']['logloss']:.4f} calibrated")
    print(f"bundle: {record['bundle']}")
    return 0


def cmd_pipeline_evaluate(args: argparse.Namespace) -> int:
    from seekrec.evaluation.report import write_results
    from seekrec.pipeline.evaluate import STAGE_GRID, format_report
    from seekrec.pipeline.run import evaluate_bundle

    report = evaluate_bundle(args.bundle, args.data, args.split, grid=STAGE_GRID if args.tune else None,
                             ease=not args.no_ease, progress=sys.stderr.isatty(), llm_run=args.llm_run,
                             llm_device=args.llm_device)
    print(format_report(report))
    if args.json:
        write_results(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    pipe = commands.add_parser("pipeline", formatter_class=HELP_FORMAT,
                               help="multi-stage pipeline: two-tower retrieval -> DIN ranking -> re-ranking")
    pipe_cmds = pipe.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")
    pt = pipe_cmds.add_parser(
        "train", help="fit features, train the two-tower and DIN, calibrate, write a bundle", formatter_class=HELP_FORMAT,
        epilog="examples:\n"
        "  seekrec pipeline train --config configs/ml-100k-pipeline.toml --out runs/ml-100k-pipeline\n"
        "  seekrec pipeline train --config configs/ml-100k-pipeline.toml --sasrec-run runs/ml-100k-sasrec\n"
        "  seekrec pipeline train --config configs/sim-pipeline.toml two_tower.train.max_epochs=5 "
        "stages.n_candidates=100\n"
        "Writes OUT/bundle (load it with seekrec.pipeline.artifacts.load_bundle), OUT/results.json and\n"
        "OUT/two_tower, OUT/din (metrics.jsonl: seekrec plot OUT/two_tower).\n",
    )
    add_config_options(pt, "PipelineConfig (see configs/*-pipeline.toml)", "din.train.lr=1e-3")
    pt.add_argument("--data", type=Path, help="prepared dataset directory (default: data.path in the config)")
    pt.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    pt.add_argument("--sasrec-run", type=Path, help="a `seekrec train` run whose best model joins the bundle as the "
                    "alternative retriever and single-stage baseline")
    pt.set_defaults(func=cmd_pipeline_train)
    pe = pipe_cmds.add_parser(
        "evaluate", help="end-to-end full-ranking evaluation of a bundle beside SASRec and EASE", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec pipeline evaluate --bundle runs/ml-100k-pipeline/bundle --data data/ml-100k\n"
        "  seekrec pipeline evaluate --bundle runs/ml-100k-pipeline/bundle --data data/ml-100k --tune "
        "--json results/pipeline.json\n"
        "  seekrec pipeline evaluate --bundle runs/sim-pipeline/bundle --data data/sim --split valid --no-ease\n"
        "--tune chooses, per retriever, the number of candidates and the retrieval score's weight in the\n"
        "final order on validation, then scores --split once.\n",
    )
    pe.add_argument("--bundle", type=Path, required=True, help="a pipeline bundle directory")
    pe.add_argument("--data", type=Path, required=True, help="the prepared dataset the bundle was trained on")
    pe.add_argument("--split", default="test", choices=["test", "valid"])
    pe.add_argument("--tune", action="store_true",
                    help="choose n_candidates and retrieval_weight on validation first")
    pe.add_argument("--no-ease", action="store_true", help="skip the EASE baseline")
    pe.add_argument("--llm-run", type=Path, help="a `seekrec llm finetune` run: also report each retriever's "
                    "candidates re-ranked by it (rows two_tower->llm, sasrec->llm)")
    pe.add_argument("--llm-device", default="cpu", help="device of the LLM re-ranker (default: %(default)s)")
    pe.add_argument("--json", type=Path, help="also write the report here")
    pe.set_defaults(func=cmd_pipeline_evaluate)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def add_offline_commands(commands: argparse._SubParsersAction) -> None:
    _add_evaluate(commands)
    _add_train(commands)
    _add_plot(commands)
    _add_recommend(commands)
    _add_pipeline_commands(commands)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "evaluate", help="full-ranking evaluation of a baseline", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec evaluate --data data/ml-100k --model pop\n"
        "  seekrec evaluate --data data/ml-100k --model ease --json results/ease.json\n"
        "  seekrec evaluate --data data/ml-100k --model ease --param l2=500 --split valid\n",
    )
    ev.add_argument("--data", type=Path, required=True, help="a prepared dataset directory")
    ev.add_argument("--model", required=True, choices=["pop", "itemknn", "ease"])
    ev.add_argument("--split", default="test", choices=["test", "valid"])
    ev.add_argument("--split-kind", default="leave_one_out", choices=["leave_one_out", "temporal"])
    ev.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="fix a hyper-parameter instead of tuning it on validation (repeatable)")
    ev.add_argument("--no-mask-history", action="store_true", help="do not mask items the user has already seen")
    ev.add_argument("--json", type=Path, help="also write the results record here")
    ev.set_defaults(func=cmd_evaluate)


def _add_train(commands: argparse._SubParsersAction) -> None:
    tr = commands.add_parser(
        "train", help="train a sequence model (SASRec, DeepSeek-rec) with early stopping", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec train --config configs/ml-100k-sasrec.toml --data data/ml-100k --out runs/sasrec\n"
        "  seekrec train --config configs/ml-100k-deepseek.toml --data data/ml-100k train.precision=bf16\n"
        "  seekrec train --config configs/ml-100k-sasrec.toml loss.name=sampled_softmax loss.n_negatives=256\n"
        "  torchrun --nproc-per-node 2 --max-restarts 3 -m seekrec.cli train --config configs/ml-100k-sasrec.toml\n"
        "  deepspeed --num_gpus 8 --module seekrec.cli train --config configs/ml-1m-sasrec.toml --deepspeed "
        "ds_config.json\n"
        "Re-running with the same --out resumes from its last checkpoint.\n",
    )
    add_config_options(tr, "ExperimentConfig (see configs/)", "train.lr=3e-4")
    tr.add_argument("--data", type=Path, help="prepared dataset directory (default: data.path in the config)")
    tr.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    tr.add_argument("--deepspeed", type=Path, metavar="JSON",
                    help="train through DeepSpeed's engine with this ds_config.json (train.strategy=deepspeed; its "
                         "values win over seekrec's defaults, and conflict with a train.* you set: "
                         "docs/distributed.md); needs pip install 'seekrec[deepspeed]'")
    tr.set_defaults(func=cmd_train)


def _add_recommend(commands: argparse._SubParsersAction) -> None:
    rc = commands.add_parser(
        "recommend", help="top-K items of a user, a history, or every user of a dataset (to CSV / Parquet)",
        formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec recommend --model runs/sasrec --data data/ml-100k --user 196\n"
        "  seekrec recommend --model runs/sasrec --history 50,172,181 --k 5\n"
        "  seekrec recommend --model registry --data data/ml-100k --all --out recs.parquet   # CURRENT version\n"
        "--all writes columns user_id, rank, item_id, score (raw ids). In Python: seekrec.api.load(...).\n",
    )
    rc.add_argument("--model", type=Path, required=True, help="a `seekrec train` run directory or a model registry")
    rc.add_argument("--version", help="registry version (default: CURRENT)")
    rc.add_argument("--data", type=Path, help="prepared dataset whose user histories --user and --all read")
    who = rc.add_mutually_exclusive_group()
    who.add_argument("--user", help="a raw user id of --data")
    who.add_argument("--history", metavar="ITEM,ITEM,...", help="raw item ids, oldest first")
    who.add_argument("--all", action="store_true", help="every user of --data, written to --out")
    rc.add_argument("--out", type=Path, help="with --all: FILE.csv or FILE.parquet")
    rc.add_argument("--k", type=int, default=10, help="items per user (default: %(default)s)")
    rc.add_argument("--batch-size", type=int, default=256, help="users per forward pass (default: %(default)s)")
    rc.add_argument("--include-seen", action="store_true", help="do not exclude items already in the history")
    rc.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    rc.set_defaults(func=cmd_recommend)


def _add_plot(commands: argparse._SubParsersAction) -> None:
    pl = commands.add_parser("plot", help="write PNG training curves of a run", formatter_class=HELP_FORMAT,
                             epilog="example:\n  seekrec plot runs/sasrec  # -> runs/sasrec/curves.png\n")
    pl.add_argument("run_dir", type=Path)
    pl.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)
