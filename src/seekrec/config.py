"""Config plumbing shared by every command: ``key=value`` overrides and dataclass sections from TOML tables."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from typing import Any


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


def build_section(cls: type, section: str, values: Any) -> Any:
    """``cls(**values)`` for the TOML table ``[section]``; unknown keys are named."""
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table")
    valid = {f.name for f in fields(cls)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in [{section}]; valid: {sorted(valid)}")
    return cls(**values)
