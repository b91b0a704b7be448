"""``seekrec data prepare | simulate``: canonical Parquet tables from a raw dataset or the simulator."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from seekrec.cli.options import (
    HELP_FORMAT,
    Parser,
    add_config_options,
    add_field_flags,
    config_from_args,
)

EVENT_LOG_SCHEMA = """\
event-log schema (--dataset csv | parquet): one row per interaction; a CSV needs a header line
(comma-separated; tab for .tsv). Other columns are ignored.
  user_id     (--user-col)       required  string or integer id
  item_id     (--item-col)       required  string or integer id
  timestamp   (--time-col)       required  unix seconds (int or float) or ISO 8601 (naive = UTC)
  VALUE       (--value-col)      optional  number (rating, watch time); --min-rating keeps rows >= it
  EVENT_TYPE  (--event-type-col) optional  text (click, purchase, ...); default 'interaction'
items file (--items, CSV or Parquet): the item id column (named as --item-col), optional title,
genres ('|'-separated or a list) and year.
A missing column is named with the flag that sets it.
"""


def cmd_prepare(args: argparse.Namespace) -> int:
    from seekrec.data.log_import import EventLogColumns
    from seekrec.data.prepare import prepare_dataset

    columns = EventLogColumns(args.user_col, args.item_col, args.time_col, args.value_col, args.event_type_col)
    manifest = prepare_dataset(
        args.dataset, args.raw, args.out, download=args.download, min_rating=args.min_rating,
        verify_counts=not args.no_verify_counts, columns=columns, items_path=args.items,
    )
    _print_written(args.out, manifest)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from seekrec.data.simulator import Simulator, SimulatorConfig

    manifest = Simulator(config_from_args(SimulatorConfig, args)).generate().write(args.out)
    _print_written(args.out, manifest)
    return 0


def _print_written(out: Path, manifest: dict[str, Any]) -> None:
    print(f"wrote {out}: {manifest['tables']['events']['rows']:,} events, "
          f"{manifest['n_users']:,} users, {manifest['n_items']:,} items")


def add_data_commands(commands: argparse._SubParsersAction, examples: str) -> None:
    data = commands.add_parser("data", help="prepare or simulate datasets", epilog=examples,
                               formatter_class=HELP_FORMAT)
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _add_prepare(data_cmds)
    _add_simulate(data_cmds)


def _add_prepare(data_cmds: argparse._SubParsersAction) -> None:
    prep = data_cmds.add_parser(
        "prepare", help="convert a raw dataset to canonical Parquet tables", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec data prepare --dataset ml-100k --raw ../shared/data/ml-100k --out data/ml-100k\n"
        "  seekrec data prepare --dataset ml-20m --raw raw/ml-20m --out data/ml-20m --download\n"
        "  seekrec data prepare --dataset csv --raw events.csv --out data/mylog\n"
        "  seekrec data prepare --dataset parquet --raw clicks.parquet --out data/shop --user-col uid --item-col sku \\\n"
        "      --time-col ts --items products.parquet\n"
        "\n" + EVENT_LOG_SCHEMA,
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


def _add_simulate(data_cmds: argparse._SubParsersAction) -> None:
    sim: Parser = data_cmds.add_parser(
        "simulate", help="generate a seeded synthetic dataset", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec data simulate --out data/sim --users 1000 --items 500 --seed 7\n"
        "  seekrec data simulate --out data/drift --config sim.toml drift_per_day=0.2 n_genres=8\n"
        "Every SimulatorConfig field (see its docstring) can be set in --config or as KEY=VALUE.\n",
    )
    sim.add_argument("--out", type=Path, required=True, help="output directory for the canonical tables")
    add_config_options(sim, "SimulatorConfig", "drift_per_day=0.2")
    sim.defer(_simulate_flags)
    sim.set_defaults(func=cmd_simulate)


def _simulate_flags(parser: argparse.ArgumentParser) -> None:
    from seekrec.data.simulator import SimulatorConfig

    add_field_flags(parser, SimulatorConfig, only=("n_users", "n_items", "mean_events_per_user", "seed"),
                    aliases={"n_users": "--users", "n_items": "--items", "mean_events_per_user": "--events-per-user"})
