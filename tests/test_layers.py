"""The package's layering, read from the source: packages stand in one order and each imports only the
ones before it, so no two import each other (docs/architecture.md lists the order)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seekrec"

# the order of docs/architecture.md: a package imports only packages before it
ORDER = ("io", "timing", "config", "data", "features", "models", "retrieval", "evaluation", "training", "registry", "llm", "online",
         "experiments", "pipeline", "publish", "serving", "demo", "api", "cli")


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@functools.cache
def import_graph() -> dict[str, dict[str, set[str]]]:
    """``{package: {imported package: {file, ...}}}`` over module-level and function-level imports."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in SRC.rglob("*.py"):
        package = _package(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("seekrec.") and _package(name) != package:
                    graph.setdefault(package, {}).setdefault(_package(name), set()).add(str(path.relative_to(SRC)))
    return graph


def test_every_package_is_placed_in_the_documented_order() -> None:
    packages = {path.stem if path.is_file() else path.name for path in SRC.iterdir()
                if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()}
    assert packages == set(ORDER), f"add new packages to ORDER (and docs/architecture.md): {packages ^ set(ORDER)}"


@pytest.mark.parametrize("package", ORDER)
def test_packages_import_only_the_ones_before_them(package: str) -> None:
    allowed = set(ORDER[: ORDER.index(package)])
    bad = {target: sorted(files) for target, files in import_graph().get(package, {}).items() if target not in allowed}
    assert not bad, f"{package} imports later packages {bad}; see docs/architecture.md"


@pytest.mark.slow
def test_the_server_loads_no_training_code() -> None:
    """A server loads models and pipeline bundles; training configs and trainers are not its business."""
    code = ("import sys, seekrec.serving.app, seekrec.serving.state, seekrec.serving.loading; "
            "print(sorted(m for m in sys.modules if m.startswith('seekrec.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
