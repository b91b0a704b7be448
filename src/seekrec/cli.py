"""``seekrec`` command line: parse arguments, call one library function, print the result.

No work happens at import: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("seekrec")

EXAMPLES = """\
examples:
  seekrec data prepare --dataset ml-100k --raw ../shared/data/ml-100k --out data/ml-100k
  seekrec data prepare --dataset ml-1m --raw raw/ --out data/ml-1m --download
  seekrec data simulate --out data/sim --users 1000 --items 500 --seed 7
  seekrec evaluate --data data/ml-100k --model ease --json results/ease.json
  seekrec train --config configs/ml-100k-sasrec.toml --data data/ml-100k --out runs/sasrec
  torchrun --nproc-per-node 2 -m seekrec.cli train --config configs/ml-100k-sasrec.toml --out runs/ddp
  seekrec plot runs/sasrec
"""


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


def cmd_prepare(args: argparse.Namespace) -> int:
    from seekrec.data.log_import import EventLogColumns
    from seekrec.data.prepare import prepare_dataset

    columns = EventLogColumns(args.user_col, args.item_col, args.time_col, args.value_col, args.event_type_col)
    manifest = prepare_dataset(
        args.dataset, args.raw, args.out, download=args.download, min_rating=args.min_rating,
        verify_counts=not args.no_verify_counts, columns=columns, items_path=args.items,
    )
    print(f"wrote {args.out}: {manifest['tables']['events']['rows']:,} events, "
          f"{manifest['n_users']:,} users, {manifest['n_items']:,} items")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from seekrec.data.simulator import Simulator, SimulatorConfig

    config = SimulatorConfig(
        n_users=args.users, n_items=args.items, mean_events_per_user=args.events_per_user, seed=args.seed
    )
    manifest = Simulator(config).generate().write(args.out)
    print(f"wrote {args.out}: {manifest['tables']['events']['rows']:,} events, "
          f"{manifest['n_users']:,} users, {manifest['n_items']:,} items")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seekrec.evaluation.report import format_table, write_results
    from seekrec.evaluation.runner import evaluate_baseline

    record = evaluate_baseline(
        args.data, args.model, args.split, split=args.split_kind, params=_parse_params(args.param),
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
    from seekrec.training.experiment import ExperimentConfig
    from seekrec.evaluation.report import format_table
    from seekrec.training.experiment import train_experiment

    config = ExperimentConfig.load(args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs") / config.name
    record = train_experiment(config, args.data, out)
    if record.get("world_size", 1) == 1 or _rank() == 0:
        print(f"best validation {config.train.select_metric} {record['valid'].get(config.train.select_metric, 0):.4f} "
              f"at epoch {record['best_epoch']}; test metrics of that checkpoint:")
        print(format_table([record]))
        print(f"run directory: {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from seekrec.evaluation.plots import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from seekrec.registry import ModelRegistry, format_manifest, format_versions, parse_version

    reg = ModelRegistry(args.root)
    if args.action == "list":
        print(format_versions(reg.versions()))
    elif args.action == "show":
        print(format_manifest(reg.manifest(parse_version(args.target or reg.current() or ""))))
    elif args.action == "promote":
        reg.promote(parse_version(args.target))
        print(f"current: {reg.current()}")
    elif args.action == "rollback":
        print(f"rolled back; current: {reg.rollback()}")
    elif args.action == "pin":
        reg.pin(parse_version(args.target), args.reason)
        print(f"pinned: {', '.join(reg.pins())}")
    elif args.action == "unpin":
        reg.unpin(parse_version(args.target))
        print(f"pinned: {', '.join(reg.pins()) or 'none'}")
    else:  # publish: a `seekrec train` run, a `seekrec pipeline train` run or a bundle
        from seekrec.publish import publish_path

        version = publish_path(reg, args.target, promote=not args.no_promote)
        print(f"published {reg.kind(version)} {version}")
    return 0


def serve_settings(args: argparse.Namespace) -> Any:
    """``--config`` TOML (its ``[serve]`` table), then any flag given on the command line on top."""
    from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings

    flags = {"registry": args.registry, "event_log": args.event_log, "data_dir": args.data, "host": args.host,
             "port": args.port, "candidates": args.candidates, "poll_interval_s": args.poll_interval,
             "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
             "compile": True if args.compile else None}
    if args.arm or args.experiment is not None:
        arms = tuple(ArmSettings.parse(spec) for spec in args.arm) or (ArmSettings("live"),)
        flags["experiment"] = ExperimentSettings(args.experiment or "default", arms)
    return ServeSettings.load(args.config, **flags)


def cmd_serve(args: argparse.Namespace) -> int:
    from seekrec.serving.app import serve

    serve(serve_settings(args))
    return 0


def cmd_stream_train(args: argparse.Namespace) -> int:
    from seekrec.online.trainer import OnlineTrainerConfig, run_online_trainer

    config = OnlineTrainerConfig(
        registry=args.registry, event_log=args.event_log, dataset=args.data, state_dir=args.state,
        lr=args.lr, publish_every_events=args.publish_every_events,
        publish_every_seconds=args.publish_every_seconds, threads=args.threads, max_events=args.max_events,
        max_seconds=args.max_seconds, consumer=args.consumer, events_per_step=args.events_per_step,
        replay_ratio=args.replay_ratio, replay_window=args.replay_window, device=args.device, seed=args.seed,
        stop_when_idle=args.stop_when_idle,
    )
    summary = run_online_trainer(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from seekrec.demo.run import DemoConfig, run_demo

    workdir = args.workdir or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    run_demo(DemoConfig(workdir=workdir, quick=args.quick, seed=args.seed, live_seconds=args.seconds,
                        workers=args.workers, event_log=args.event_log), show=lambda line: print(line, flush=True))
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
                             ease=not args.no_ease, progress=sys.stderr.isatty())
    print(format_report(report))
    if args.json:
        write_results(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _add_pipeline_commands(commands: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    pipe = commands.add_parser("pipeline", formatter_class=fmt,
                               help="multi-stage pipeline: two-tower retrieval -> DIN ranking -> re-ranking")
    pipe_cmds = pipe.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")
    pt = pipe_cmds.add_parser(
        "train", help="fit features, train the two-tower and DIN, calibrate, write a bundle", formatter_class=fmt,
        epilog="examples:\n"
        "  seekrec pipeline train --config configs/ml-100k-pipeline.toml --out runs/ml-100k-pipeline\n"
        "  seekrec pipeline train --config configs/ml-100k-pipeline.toml --sasrec-run runs/ml-100k-sasrec\n"
        "  seekrec pipeline train --config configs/sim-pipeline.toml two_tower.train.max_epochs=5 "
        "stages.n_candidates=100\n"
        "Writes OUT/bundle (load it with seekrec.pipeline.artifacts.load_bundle), OUT/results.json and\n"
        "OUT/two_tower, OUT/din (metrics.jsonl: seekrec plot OUT/two_tower).\n",
    )
    pt.add_argument("--config", type=Path, help="TOML pipeline config (see configs/*-pipeline.toml)")
    pt.add_argument("--data", type=Path, help="prepared dataset directory (default: data.path in the config)")
    pt.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    pt.add_argument("--sasrec-run", type=Path, help="a `seekrec train` run whose best model joins the bundle as the "
                    "alternative retriever and single-stage baseline")
    pt.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. din.train.lr=1e-3")
    pt.set_defaults(func=cmd_pipeline_train)
    pe = pipe_cmds.add_parser(
        "evaluate", help="end-to-end full-ranking evaluation of a bundle beside SASRec and EASE", formatter_class=fmt,
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
    pe.add_argument("--json", type=Path, help="also write the report here")
    pe.set_defaults(func=cmd_pipeline_evaluate)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="seekrec", description="Real-time deep-learning recommender system.", epilog=EXAMPLES, formatter_class=fmt
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="prepare or simulate datasets", epilog=EXAMPLES, formatter_class=fmt)
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    prep = data_cmds.add_parser(
        "prepare", help="convert a raw dataset to canonical Parquet tables", formatter_class=fmt,
        epilog="examples:\n  seekrec data prepare --dataset ml-100k --raw ../shared/data/ml-100k --out data/ml-100k\n"
        "  seekrec data prepare --dataset ml-20m --raw raw/ml-20m --out data/ml-20m --download\n"
        "  seekrec data prepare --dataset csv --raw events.csv --out data/mylog\n"
        "  seekrec data prepare --dataset parquet --raw clicks.parquet --out data/shop --user-col uid --item-col sku \\\n"
        "      --time-col ts --items products.parquet\n",
    )
    prep.add_argument("--dataset", required=True, help="ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest, "
                      "ml-latest-small, or csv/parquet for a generic event log")
    prep.add_argument("--raw", type=Path, help="directory with the raw files (or the event-log file)")
    prep.add_argument("--out", type=Path, required=True, help="output directory for the canonical tables")
    prep.add_argument("--download", action="store_true", help="fetch the official archive if --raw lacks it")
    prep.add_argument("--min-rating", type=float, help="keep only ratings >= this (default: every rating)")
    prep.add_argument("--no-verify-counts", action="store_true", help="allow subsets of an official release")
    log_cols = prep.add_argument_group("csv / parquet event logs: column names")
    for flag, default in (("user", "user_id"), ("item", "item_id"), ("time", "timestamp")):
        log_cols.add_argument(f"--{flag}-col", default=default, help="default: %(default)s")
    log_cols.add_argument("--value-col", help="value per event, thresholded by --min-rating (default: every value 1)")
    log_cols.add_argument("--event-type-col", help="event kind per row (default: every row 'interaction')")
    log_cols.add_argument("--items", type=Path, help="items file (item id column as --item-col; title, genres, year)")
    prep.set_defaults(func=cmd_prepare)

    sim = data_cmds.add_parser(
        "simulate", help="generate a seeded synthetic dataset", formatter_class=fmt,
        epilog="example:\n  seekrec data simulate --out data/sim --users 1000 --items 500 --seed 7\n",
    )
    sim.add_argument("--out", type=Path, required=True)
    sim.add_argument("--users", type=int, default=1000)
    sim.add_argument("--items", type=int, default=500)
    sim.add_argument("--events-per-user", type=float, default=50.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)

    ev = commands.add_parser(
        "evaluate", help="full-ranking evaluation of a baseline", formatter_class=fmt,
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

    tr = commands.add_parser(
        "train", help="train a sequence model (SASRec, DeepSeek-rec) with early stopping", formatter_class=fmt,
        epilog="examples:\n  seekrec train --config configs/ml-100k-sasrec.toml --data data/ml-100k --out runs/sasrec\n"
        "  seekrec train --config configs/ml-100k-deepseek.toml --data data/ml-100k train.precision=bf16\n"
        "  seekrec train --config configs/ml-100k-sasrec.toml loss.name=sampled_softmax loss.n_negatives=256\n"
        "  torchrun --nproc-per-node 2 --max-restarts 3 -m seekrec.cli train --config configs/ml-100k-sasrec.toml\n"
        "Re-running with the same --out resumes from its last checkpoint.\n",
    )
    tr.add_argument("--config", type=Path, help="TOML experiment config (see configs/)")
    tr.add_argument("--data", type=Path, help="prepared dataset directory (default: data.path in the config)")
    tr.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=3e-4")
    tr.set_defaults(func=cmd_train)

    pl = commands.add_parser("plot", help="write PNG training curves of a run", formatter_class=fmt,
                             epilog="example:\n  seekrec plot runs/sasrec  # -> runs/sasrec/curves.png\n")
    pl.add_argument("run_dir", type=Path)
    pl.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    rg = commands.add_parser(
        "registry", help="list, inspect, publish, promote or roll back model versions", formatter_class=fmt,
        epilog="examples:\n  seekrec registry --root registry publish runs/sasrec\n  seekrec registry --root registry list\n"
        "  seekrec registry --root registry show v000002\n  seekrec registry --root registry promote v000001\n"
        "  seekrec registry --root registry rollback\n"
        "  seekrec registry --root registry pin v000001 --reason 'A/B control arm'\n"
        "  seekrec registry --root registry publish runs/pipeline   # a `seekrec pipeline train` run\n",
    )
    rg.add_argument("--root", type=Path, default=Path("registry"), help="registry directory (default: ./registry)")
    rg.add_argument("action", choices=["list", "show", "promote", "rollback", "publish", "pin", "unpin"])
    rg.add_argument("target", nargs="?", help="a version (show, promote) or a run directory (publish: "
                    "`seekrec train` or `seekrec pipeline train`)")
    rg.add_argument("--no-promote", action="store_true", help="publish without making it current")
    rg.add_argument("--reason", default="", help="why a version is pinned (kept from retention)")
    rg.set_defaults(func=cmd_registry)

    sv = commands.add_parser(
        "serve", help="HTTP API: /recommend, /events, /healthz, /readyz, /metrics", formatter_class=fmt,
        epilog="examples:\n  seekrec serve --registry registry --event-log sqlite:///$PWD/events.db --data data/sim\n"
        "  seekrec serve --registry registry --event-log redis://127.0.0.1:6379/0 --data data/sim \\\n"
        "      --experiment drift-test --arm control=v000001:0.5 --arm treatment=current:0.5\n"
        "  seekrec serve --config configs/serve-pipeline-ab.toml     # sequence model vs pipeline bundle\n"
        "flags given on the command line override the config file; defaults in brackets apply to neither\n",
    )
    sv.add_argument("--config", type=Path, help="TOML file with a [serve] table (ServeSettings fields)")
    sv.add_argument("--registry", type=Path, help="model registry directory (required, here or in --config)")
    sv.add_argument("--event-log", help="sqlite:///ABS/PATH.db, a path, or redis://host:port/db (required)")
    sv.add_argument("--data", type=Path, help="prepared dataset: the users' histories before live events")
    sv.add_argument("--host", help="[127.0.0.1]")
    sv.add_argument("--port", type=int, help="[8000]")
    sv.add_argument("--candidates", type=int, help="ANN candidates before the seen filter [200]")
    sv.add_argument("--poll-interval", type=float, help="seconds between registry checks (hot swap) [2]")
    sv.add_argument("--max-batch", type=int, help="micro-batch size [64]")
    sv.add_argument("--max-wait-ms", type=float, help="micro-batch wait [2]")
    sv.add_argument("--threads", type=int, help="torch and FAISS threads, 0: one per core [1]")
    sv.add_argument("--compile", action="store_true",
                    help="torch.compile the user encoder of each loaded version (less CPU per request; "
                         "~1 min of compilation per version, so for stable versions)")
    sv.add_argument("--experiment", help="A/B experiment name (hash salt) [default]")
    sv.add_argument("--arm", action="append", default=[], metavar="NAME=VERSION[:WEIGHT]",
                    help="an arm serving a pinned version or 'current' (repeatable; default: one live arm)")
    sv.set_defaults(func=cmd_serve)

    st = commands.add_parser(
        "stream-train", help="train the current model on the live event stream and publish versions",
        formatter_class=fmt,
        epilog="example:\n  seekrec stream-train --registry registry --event-log sqlite:///$PWD/events.db "
        "--data data/sim --state online\n",
    )
    st.add_argument("--registry", type=Path, required=True)
    st.add_argument("--event-log", required=True)
    st.add_argument("--data", type=Path, required=True, help="the dataset the base model was trained on")
    st.add_argument("--state", type=Path, required=True, help="checkpoint directory (resumes from it)")
    st.add_argument("--lr", type=float, default=3e-4)
    st.add_argument("--publish-every-events", type=int, default=1000)
    st.add_argument("--publish-every-seconds", type=float, default=60.0)
    st.add_argument("--threads", type=int, help="torch threads")
    st.add_argument("--max-events", type=int, help="stop after this many events (default: run forever)")
    st.add_argument("--max-seconds", type=float, help="stop after this long (default: run forever)")
    st.add_argument("--consumer", default="online-trainer", help="event-log consumer name (keys the committed offset)")
    st.add_argument("--events-per-step", type=int, default=64)
    st.add_argument("--replay-ratio", type=float, default=3.0, help="replayed examples per new event")
    st.add_argument("--replay-window", type=int, default=10_000, help="replay from the most recent N examples")
    st.add_argument("--device", default="auto")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--stop-when-idle", action="store_true", help="stop once the log is drained")
    st.set_defaults(func=cmd_stream_train)

    dm = commands.add_parser(
        "demo", help="the whole real-time loop on the simulator, with a live A/B test", formatter_class=fmt,
        epilog="examples:\n  seekrec demo --quick      # under 3 minutes on 2 cores\n"
        "  seekrec demo --seconds 600 --workdir runs/demo\n"
        "  seekrec demo --quick --event-log 'redis://127.0.0.1:6379/0?stream=demo:events'\n",
    )
    dm.add_argument("--quick", action="store_true", help="small world, short live phase")
    dm.add_argument("--workdir", type=Path, help="where data, registry, logs and report go")
    dm.add_argument("--seconds", type=float, help="length of the live phase")
    dm.add_argument("--workers", type=int, default=4, help="concurrent simulated-user loops")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--event-log", help="event log url for the server and the online trainer "
                    "(default: SQLite in the workdir; redis://... for Redis Streams)")
    dm.set_defaults(func=cmd_demo)
    _add_pipeline_commands(commands, fmt)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a line per HTTP request would bury the demo's table and the progress bars
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, OSError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"seekrec: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
