"""``seekrec`` command line: parse arguments, build a config, call one library function, print the result.

One module per command group (``data``, ``offline``, ``registry``, ``live``); ``options`` derives flags
from the config dataclasses. No work happens at import: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from seekrec import __version__
from seekrec.cli.data import add_data_commands
from seekrec.cli.experiment import add_experiment_commands
from seekrec.cli.keys import add_keys_command
from seekrec.cli.live import add_live_commands
from seekrec.cli.llm import add_llm_commands
from seekrec.cli.offline import add_offline_commands
from seekrec.cli.options import HELP_FORMAT, Parser
from seekrec.cli.registry import add_registry_command

QUIET_LOGGERS = ("httpx", "faiss", "matplotlib")  # set to WARNING unless --verbose

EXAMPLES = """\
examples:
  seekrec data prepare --dataset ml-100k --raw ../shared/data/ml-100k --out data/ml-100k
  seekrec data prepare --dataset ml-1m --raw raw/ --out data/ml-1m --download
  seekrec data simulate --out data/sim --users 1000 --items 500 --seed 7
  seekrec evaluate --data data/ml-100k --model ease --json results/ease.json
  seekrec train --config configs/ml-100k-sasrec.toml --data data/ml-100k --out runs/sasrec
  torchrun --nproc-per-node 2 -m seekrec.cli train --config configs/ml-100k-sasrec.toml --out runs/ddp
  seekrec plot runs/sasrec
  seekrec llm finetune --config configs/ml-100k-llm-rerank.toml --data data/ml-100k --retriever-run runs/sasrec
"""


def build_parser() -> Parser:
    """The whole ``seekrec`` parser; each command's config-derived flags are added when it parses."""
    parser = Parser(prog="seekrec", description="Real-time deep-learning recommender system.", epilog=EXAMPLES,
                    formatter_class=HELP_FORMAT)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"seekrec {__version__}")
    # the deepspeed launcher puts --local_rank=N before the command; the rank is read from LOCAL_RANK
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(commands, EXAMPLES)
    add_offline_commands(commands)
    add_registry_command(commands)
    add_live_commands(commands)
    add_llm_commands(commands)
    add_keys_command(commands)
    add_experiment_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``seekrec``: a user's mistake is one ``seekrec: error:`` line and exit code 2, never a traceback."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # `seekrec registry list | head -1`: the reader has what it wanted; later writes (and the flush at
        # exit) go nowhere instead of printing a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a command killed by the closed pipe would


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    finally:
        sys.stdout.flush()  # --help into a closed pipe fails here, where main catches it
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # a line per HTTP request, FAISS probing AVX2 builds, matplotlib's font cache: noise
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
        return code
    except BrokenPipeError:
        raise
    except (ValueError, KeyError, FileNotFoundError, OSError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"seekrec: error: {message}", file=sys.stderr)
        return 2
