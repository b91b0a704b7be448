"""The real-time loop's commands: ``seekrec serve``, ``seekrec stream-train`` and ``seekrec demo``.

Their flags come from ``ServeSettings``, ``OnlineTrainerConfig`` and ``DemoConfig`` (``add_field_flags``);
the old short spellings (``--data``, ``--state``, ``--poll-interval``, ``--seconds``) stay as aliases.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from seekrec.cli.options import (
    HELP_FORMAT,
    Parser,
    add_config_options,
    add_field_flags,
    config_from_args,
    field_values,
)


def serve_settings(args: argparse.Namespace) -> Any:
    """``--config`` TOML (its ``[serve]`` table), then any flag given on the command line, then KEY=VALUE."""
    from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings

    flags = field_values(args)
    if args.arm or args.experiment is not None:
        arms = tuple(ArmSettings.parse(spec) for spec in args.arm) or (ArmSettings("live"),)
        flags["experiment"] = ExperimentSettings(args.experiment or ExperimentSettings.name, arms)
    return ServeSettings.load(args.config, args.overrides, **flags)


def cmd_serve(args: argparse.Namespace) -> int:
    from seekrec.cli.registry import require_registry

    settings = serve_settings(args)  # a wrong flag fails before the app and its models are imported
    require_registry(settings.registry, "--registry")
    from seekrec.serving.app import serve

    serve(settings)
    return 0


def cmd_stream_train(args: argparse.Namespace) -> int:
    from seekrec.online.trainer import OnlineTrainerConfig, run_online_trainer

    config = config_from_args(OnlineTrainerConfig, args)
    summary = run_online_trainer(config, arm_traffic(args, config))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def arm_traffic(args: argparse.Namespace, config: Any) -> Any:
    """``--experiments FILE --arm EXP=ARM``: the filter of a per-arm learner (None: every user's events)."""
    if args.arm is None:
        if args.experiments is not None:
            raise ValueError("--experiments names the experiment definitions for --arm EXPERIMENT=ARM; give both")
        return None
    if args.experiments is None:
        raise ValueError("--arm needs --experiments FILE, the definitions the server assigns users with")
    if config.channel is None:
        raise ValueError("a learner of one arm must publish to that arm's own channel: add --channel NAME "
                         "(and serve the arm with version = \"channel:NAME\")")
    from seekrec.experiments.arm_traffic import ArmTraffic, parse_arm_spec
    from seekrec.experiments.definition import ExperimentsConfig
    from seekrec.experiments.rollout_store import RolloutStore

    experiment, arm = parse_arm_spec(args.arm)
    rollout_dir = args.rollout_dir or Path(config.registry) / "rollouts"
    return ArmTraffic(ExperimentsConfig.load(args.experiments), experiment, arm, RolloutStore(rollout_dir))


def cmd_demo(args: argparse.Namespace) -> int:
    from seekrec.demo.run import DemoConfig, run_demo

    run_demo(config_from_args(DemoConfig, args), show=lambda line: print(line, flush=True))
    return 0


def add_live_commands(commands: argparse._SubParsersAction) -> None:
    _add_serve(commands)
    _add_stream_train(commands)
    _add_demo(commands)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    sv: Parser = commands.add_parser(
        "serve", help="HTTP API: /recommend, /events, /healthz, /readyz, /metrics", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec serve --registry registry --event-log sqlite:///$PWD/events.db --data data/sim\n"
        "  seekrec serve --registry registry --event-log redis://127.0.0.1:6379/0 --data data/sim \\\n"
        "      --experiment drift-test --arm control=v000001:0.5 --arm treatment=current:0.5\n"
        "  seekrec serve --registry /shared/registry --event-log redis://10.0.0.5:6379/0 --data data/sim \\\n"
        "      --port 8001 --read-your-writes      # one of N replicas (docs/serving.md, Replicas)\n"
        "  seekrec serve --config configs/serve-pipeline-ab.toml     # sequence model vs pipeline bundle\n"
        "  seekrec serve --config configs/serve-pipeline-ab.toml port=9000 experiment.name=exp2\n"
        "--config reads a [serve] table (or the top level); flags beat it, KEY=VALUE beats both.\n",
    )
    add_config_options(sv, "ServeSettings", "max_batch=32")
    sv.add_argument("--experiment", help="A/B experiment name (hash salt; default: the config's, else 'default')")
    sv.add_argument("--arm", action="append", default=[], metavar="NAME=VERSION[:WEIGHT]",
                    help="an arm serving a pinned version or 'current' (repeatable; default: one live arm)")
    sv.defer(_serve_flags)
    sv.set_defaults(func=cmd_serve)


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    from seekrec.serving.settings import ServeSettings

    add_field_flags(parser, ServeSettings, aliases={"data_dir": "--data", "poll_interval_s": "--poll-interval"})


def _add_stream_train(commands: argparse._SubParsersAction) -> None:
    st: Parser = commands.add_parser(
        "stream-train", help="train the current model on the live event stream and publish versions",
        formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec stream-train --registry registry --event-log sqlite:///$PWD/events.db "
        "--data data/sim --state online\n"
        "  seekrec stream-train --config online.toml --max-events 5000 loss.name=bce loss.n_negatives=64\n"
        "  seekrec stream-train ... --state online-control --consumer learner-control --channel control \\\n"
        "      --experiments experiments.toml --arm explore-test=control   # this arm's traffic only\n"
        "Every OnlineTrainerConfig field is a flag above; the loss (LossConfig) is set as loss.KEY=VALUE.\n",
    )
    add_config_options(st, "OnlineTrainerConfig", "loss.name=bce")
    st.add_argument("--experiments", type=Path, default=None,
                    help="experiment definitions TOML the server assigns users with (with --arm; default: none)")
    st.add_argument("--arm", default=None, metavar="EXPERIMENT=ARM",
                    help="train only on the events of this arm's users, as the server assigns them (needs "
                         "--experiments and --channel; default: every user's events)")
    st.add_argument("--rollout-dir", type=Path, default=None,
                    help="rollout state files, for an arm of a rollout (default: REGISTRY/rollouts, as the server)")
    st.defer(_stream_train_flags)
    st.set_defaults(func=cmd_stream_train)


def _stream_train_flags(parser: argparse.ArgumentParser) -> None:
    from seekrec.online.trainer import OnlineTrainerConfig

    add_field_flags(parser, OnlineTrainerConfig, aliases={"dataset": "--data", "state_dir": "--state"})


def _add_demo(commands: argparse._SubParsersAction) -> None:
    dm: Parser = commands.add_parser(
        "demo", help="the whole real-time loop on the simulator, with a live A/B test", formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec demo --quick      # under 3 minutes on 2 cores\n"
        "  seekrec demo --seconds 600 --workdir runs/demo\n"
        "  seekrec demo --quick --event-log 'redis://127.0.0.1:6379/0?stream=demo:events'\n",
    )
    add_config_options(dm, "DemoConfig", "workers=2")
    dm.defer(_demo_flags)
    dm.set_defaults(func=cmd_demo)


def _demo_flags(parser: argparse.ArgumentParser) -> None:
    from seekrec.demo.run import DemoConfig

    add_field_flags(parser, DemoConfig, aliases={"live_seconds": "--seconds"})
