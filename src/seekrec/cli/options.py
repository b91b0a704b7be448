"""Command-line options derived from config dataclasses: ``--config FILE``, ``KEY=VALUE`` overrides and
one flag per scalar field, whose type, default and help come from the field itself (never restated)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from seekrec.config import load_config

T = TypeVar("T")
_DEST = "field:"  # namespace prefix of field flags, so they never collide with a command's own options
_SCALARS = (bool, int, float, str)
HELP_FORMAT = argparse.RawDescriptionHelpFormatter  # keeps the examples' line breaks


_USAGE_ERRORS = ("unrecognized arguments", "the following arguments are required", "expected one argument")


class Parser(argparse.ArgumentParser):
    """The CLI's parser: a user's mistake is one ``seekrec: error:`` line, and options ``defer``red to
    parse time, so building the whole CLI imports no command's config class (some import torch)."""

    def defer(self, add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Run ``add(self)`` just before this parser first parses (``--help`` included)."""
        self.__dict__.setdefault("_deferred", []).append(add)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        for add in self.__dict__.pop("_deferred", []):
            add(self)
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:
            # a command (not a group) reports its own unknown flags, so the usage shown is the command's
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> typing.NoReturn:
        """One error line; for an unknown flag or a missing argument the command's usage line first,
        since the fix is usually in its spelling."""
        usage = self.short_usage() + "\n" if message.startswith(_USAGE_ERRORS) else ""
        self.exit(2, f"{usage}seekrec: error: {message} (see {self.prog} --help)\n")

    def short_usage(self) -> str:
        """``usage: PROG [options] REQUIRED...``: the command's required flags and positionals only
        (argparse's full usage of a command with thirty flags fills a screen)."""
        formatter = self._get_formatter()
        formatter.add_usage(None, [a for a in self._actions if a.required or not a.option_strings], [])
        prog, _, rest = formatter.format_help().strip().partition(self.prog)
        return " ".join(f"{prog}{self.prog} [options] {' '.join(rest.split())}".split())


def add_config_options(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``--config FILE`` and positional ``KEY=VALUE`` overrides of the dataclass ``what``."""
    parser.add_argument("--config", type=Path, metavar="FILE", help=f"TOML file of {what} fields")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"field overrides, nested ones dotted, values parsed as JSON, e.g. {example}")


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: Collection[str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> None:
    """A ``--field-name`` flag per scalar field of ``cls`` (``only``: just these); ``aliases``: an extra
    spelling per field (``{"dataset": "--data"}``). Nested and tuple fields are set by --config or KEY=VALUE."""
    group = parser.add_argument_group(f"{cls.__name__} fields (a flag beats --config; KEY=VALUE beats both)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        if not f.init or kind is None or (only is not None and f.name not in only):
            continue
        names = [f"--{f.name.replace('_', '-')}", *([aliases[f.name]] if aliases and f.name in aliases else [])]
        text = f.metadata.get("help", "")
        if "(default:" not in text:  # a help that says its default in words keeps only those
            text += f" ({_shown_default(f)})"
        text = text.strip().replace("%", "%%")
        if kind is bool:
            group.add_argument(*names, dest=_DEST + f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(*names, dest=_DEST + f.name, type=kind, default=argparse.SUPPRESS,
                               metavar="TEXT" if kind is str else kind.__name__.upper(), help=text)


def field_values(args: argparse.Namespace) -> dict[str, Any]:
    """The field flags given on the command line (absent ones keep the file's or the dataclass's value)."""
    return {key[len(_DEST):]: value for key, value in vars(args).items() if key.startswith(_DEST)}


def config_from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` from ``--config``, then the field flags and ``values``, then the ``KEY=VALUE`` overrides."""
    return load_config(cls, args.config, args.overrides, values={**field_values(args), **values})


def _flag_type(hint: Any) -> type | None:
    """The flag's value type: ``Path`` where the field takes one, else its scalar type; None: no flag."""
    options = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    if Path in options:
        return Path
    return options[0] if len(options) == 1 and options[0] in _SCALARS else None


def _shown_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"default: {'none' if f.default is None else f.default}"
    if f.default_factory is not dataclasses.MISSING:
        return ""  # computed when the config is built (the help says what it is)
    return "required, here or in --config"
