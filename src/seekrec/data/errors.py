"""Errors raised for bad input data: they always name the file (and line) at fault."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A raw or prepared data file that cannot be read as promised.

    ``line`` is 1-based and ``None`` when the problem concerns the whole file.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")
