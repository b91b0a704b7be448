"""``seekrec registry``: list, inspect, publish, promote, pin or roll back model versions."""

from __future__ import annotations

import argparse
from pathlib import Path

from seekrec.cli.options import HELP_FORMAT


def cmd_registry(args: argparse.Namespace) -> int:
    from seekrec.registry import ModelRegistry, format_manifest, format_versions, parse_version

    if args.action != "publish":  # publishing creates the registry; every other action reads one
        require_registry(args.root, "--root")
    reg = ModelRegistry(args.root)
    if args.action == "list":
        print(format_versions(reg.versions()))
        channels = reg.channels()
        if channels:
            print("channels: " + ", ".join(f"{name} -> {version}" for name, version in channels.items()))
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


def require_registry(root: Path, flag: str) -> None:
    """A registry directory that does not exist is a mistyped path, not an empty registry: say so."""
    if not root.is_dir():
        raise ValueError(f"{root}: no such registry directory; check {flag}, or create it with "
                         f"`seekrec registry --root {root} publish RUN_DIR`")


def add_registry_command(commands: argparse._SubParsersAction) -> None:
    rg = commands.add_parser(
        "registry", help="list, inspect, publish, promote or roll back model versions", formatter_class=HELP_FORMAT,
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
