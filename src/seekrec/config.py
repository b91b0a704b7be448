"""The one dataclass-from-TOML loader: every config (training, pipeline, serving, online trainer, demo,
simulator) is a dataclass read by ``load_config`` from a TOML file, flags and ``key=value`` overrides.

Defaults live in the dataclasses only: a partial table overrides the field's default value (a nested
dataclass or a dict), so a file lists just what it changes. Errors name the key and where it came from.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from seekrec.io import read_toml

T = TypeVar("T")
COMMAND_LINE = "command line"


class UnknownKeyError(ValueError):
    """A key no field of the dataclass takes; ``key`` is its dotted path from the top of the config."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``train.lr=3e-4`` -> ``raw["train"]["lr"] = 0.0003``; values parse as JSON when they can."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = value
    return out


def from_table(cls: type[T], table: Any, section: str = "", base: T | None = None) -> T:
    """``cls`` from a (TOML) table: nested dataclasses build recursively, lists become tuples where the
    field is a tuple, and keys absent from ``table`` keep ``base``'s values (``None``: the defaults).

    A nested dataclass with a ``from_dict`` classmethod (``ModelSection``) parses its own table.
    """
    if not isinstance(table, Mapping):
        raise ValueError(f"[{section}] must be a table, got {table!r}" if section else "the config must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in table:
        if key not in fields:
            path = f"{section}.{key}" if section else key
            where = f"in [{section}]" if section else "at the top level"
            kind = " (unknown config section)" if isinstance(table[key], Mapping) else ""
            raise UnknownKeyError(path, f"unknown key {key!r} {where}{kind}; valid: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _convert(hints[key], value, f"{section}.{key}" if section else key, _default(fields[key], base))
              for key, value in table.items()}
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    missing = [name for name, f in fields.items() if name not in kwargs and _required(f)]
    if missing and section:
        raise ValueError(f"missing key(s) {', '.join(missing)} in [{section}]")
    if missing:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in missing)
        raise ValueError(f"missing {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} in the config "
                         f"file or pass {flags}")
    return cls(**kwargs)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Any] | None = None,
    table: str | None = None,
) -> T:
    """``cls`` from TOML ``path`` (its ``[table]`` when it has one; ``None``: defaults only), then
    ``values`` (command-line flags, top-level keys), then ``key=value`` ``overrides``.

    Every error is one ``ValueError`` naming the file, or the command line, where the bad key came from.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such config file; check the --config path")
        raw = read_toml(path)
        if table is not None and isinstance(raw.get(table), Mapping):
            raw = dict(raw[table])
    from_cli = dict(values or {})
    raw.update(from_cli)
    try:
        return from_table(cls, apply_overrides(raw, list(overrides)))
    except UnknownKeyError as exc:
        raise ValueError(f"{_origin(exc.key, path, from_cli, overrides)}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        sources = [str(path)] * (path is not None) + [COMMAND_LINE] * bool(from_cli or overrides or path is None)
        raise ValueError(f"{', '.join(sources)}: {exc}") from exc


def _origin(key: str, path: str | Path | None, flags: Mapping[str, Any], overrides: Sequence[str]) -> str:
    """Where the bad ``key`` (a dotted path) was set: the override that set it, a flag, or the file."""
    for item in reversed(overrides):
        name = item.partition("=")[0]
        if name == key or name.startswith(key + ".") or key.startswith(name + "."):
            return f"{COMMAND_LINE} override {item!r}"
    if key.split(".")[0] in flags or path is None:
        return COMMAND_LINE
    return str(path)


def _default(f: dataclasses.Field, base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert(hint: Any, value: Any, where: str, default: Any) -> Any:
    """One TOML value for a field of type ``hint`` (``default``: the value a partial table updates)."""
    if value is None:
        return None
    options = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    for option in options:
        origin = typing.get_origin(option) or option
        if dataclasses.is_dataclass(origin) and isinstance(value, Mapping):
            if hasattr(origin, "from_dict"):
                return origin.from_dict(value)
            return from_table(origin, value, where, default if isinstance(default, origin) else None)
        if origin is tuple and isinstance(value, (list, tuple)):
            args = typing.get_args(option)
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            elif len(args) != len(value):
                raise ValueError(f"{where} takes {len(args)} values, got {len(value)}: {list(value)!r}")
            return tuple(_convert(a, v, where, None) for a, v in zip(args, value))
        if origin is dict and isinstance(value, Mapping):
            return {**(default or {}), **value}
        if origin is Path and isinstance(value, str) and len(options) == 1:
            return Path(value)
    _check_scalar(options, value, where)
    return value


def check_types(cls: type, table: Mapping[str, Any], section: str = "") -> None:
    """Raise a ``ValueError`` naming the key when a value of ``table`` has the wrong type for its field of
    ``cls`` (a str where a float is declared); keys ``cls`` lacks are left to the caller. For tables that
    are not built through ``from_table`` (a model's params, a baseline's ``--param``)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        if key in fields:
            _convert(hints[key], value, f"{section}.{key}" if section else key, _default(fields[key], None))


_SCALAR_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _check_scalar(options: list[Any], value: Any, where: str) -> None:
    """A field typed only with scalars (``float``, ``int | None``, ``str``, ``Path``) must get one of them:
    ``lr = "abc"`` fails here, naming the key, instead of deep inside a comparison. Other hints (tuples,
    dicts, literals, ``Any``) are not checked here."""
    if not options or any(option not in _SCALAR_NAMES for option in options):
        return
    for option in options:
        if option is bool and isinstance(value, bool):
            return
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if option in (str, Path) and isinstance(value, (str, Path)):
            return
    wanted = " or ".join(_SCALAR_NAMES[o] for o in options)
    raise ValueError(f"{where} must be {wanted}, got {value!r}")
