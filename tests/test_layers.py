"""The package's layering, read from the source: no two packages import each other, and the lower
stages never reach up (docs/architecture.md draws the allowed directions)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seekrec"

# what each package must never import, whatever else changes
FORBIDDEN = {
    "data": {"features", "models", "training", "online", "pipeline", "serving", "demo", "cli"},
    "features": {"models", "training", "online", "pipeline", "serving", "demo", "cli"},
    "models": {"training", "online", "evaluation", "pipeline", "serving", "demo", "cli"},
    "training": {"online", "pipeline", "serving", "demo", "cli"},
    "evaluation": {"training", "online", "pipeline", "serving", "demo", "cli"},
    "online": {"pipeline", "serving", "demo", "cli"},
    "pipeline": {"serving", "demo", "cli"},
    "serving": {"training", "demo", "cli"},
}


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


def test_no_two_packages_import_each_other() -> None:
    graph = import_graph()
    pairs = [(a, b, sorted(graph[a][b]), sorted(graph[b][a])) for a in graph for b in graph[a]
             if a < b and a in graph.get(b, {})]
    assert not pairs, f"import cycles (package, package, files each way): {pairs}"


def test_no_cycle_through_several_packages() -> None:
    graph = {a: set(targets) for a, targets in import_graph().items()}
    visiting, done = set(), set()

    def visit(node: str, path: list[str]) -> None:
        if node in visiting:
            pytest.fail(f"import cycle: {' -> '.join(path[path.index(node):] + [node])}")
        if node in done:
            return
        visiting.add(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        visiting.discard(node)
        done.add(node)

    for start in sorted(graph):
        visit(start, [])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_stages_never_reach_up(package: str) -> None:
    imported = import_graph().get(package, {})
    bad = {target: sorted(files) for target, files in imported.items() if target in FORBIDDEN[package]}
    assert not bad, f"{package} imports {bad}"


@pytest.mark.slow
def test_the_server_loads_no_training_code() -> None:
    """A server loads models and pipeline bundles; training configs and trainers are not its business."""
    code = ("import sys, seekrec.serving.app, seekrec.serving.state, seekrec.serving.loading; "
            "print(sorted(m for m in sys.modules if m.startswith('seekrec.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
