"""``seekrec keys``: make API keys for ``seekrec serve --api-keys-file`` (only their SHA-256 is stored)."""

from __future__ import annotations

import argparse
import sys

from seekrec.cli.options import HELP_FORMAT, Parser


def cmd_keys_new(args: argparse.Namespace) -> int:
    from seekrec.serving.auth import hash_key, new_key, parse_role

    role = parse_role(args.role)
    key = new_key()
    print(f"key:  {key}")
    print(f"line: {role.value} {hash_key(key)}")
    print("give the key to the client (it is stored nowhere); append the line to the keys file, which the "
          "server re-reads on change", file=sys.stderr)
    return 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    from seekrec.serving.auth import hash_key, parse_role

    key = sys.stdin.readline().strip()  # from stdin, not argv: argv shows in `ps` and the shell history
    if not key:
        raise ValueError("no key on stdin: pipe the key in, e.g. `printf %s \"$KEY\" | seekrec keys hash read`")
    print(f"{parse_role(args.role).value} {hash_key(key)}" if args.role else hash_key(key))
    return 0


def add_keys_command(commands: argparse._SubParsersAction) -> None:
    keys: Parser = commands.add_parser(
        "keys", help="make API keys for seekrec serve (roles: read, ingest, metrics, admin)",
        formatter_class=HELP_FORMAT,
        epilog="examples:\n  seekrec keys new read      # prints a new key and its keys-file line\n"
        "  printf %s \"$KEY\" | seekrec keys hash ingest >> keys.txt\n"
        "  seekrec serve --api-keys-file keys.txt --host 0.0.0.0 ...\n",
    )
    sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = sub.add_parser("new", help="a fresh random key and its 'ROLE SHA256HEX' line")
    new.add_argument("role", help="read, ingest, metrics or admin")
    new.set_defaults(func=cmd_keys_new)
    hashed = sub.add_parser("hash", help="the SHA-256 of a key read from stdin (with ROLE: the keys-file line)")
    hashed.add_argument("role", nargs="?", help="read, ingest, metrics or admin")
    hashed.set_defaults(func=cmd_keys_hash)
