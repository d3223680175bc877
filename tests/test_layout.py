"""The layout holds: the runtime imports no service, modules import no cycle, tests stand alone.

Read from the source (every import statement, at any depth), not by importing it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY_FLOOR = "daemon.app"


def _modules(*roots: str) -> dict[str, Path]:
    found = {}
    for root in roots:
        for path in (REPO / root).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, known: dict[str, Path], top_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """(module imported, line) for each import in ``path``: ``from p import m`` is ``p.m`` when
    that is a module of ``known``, else ``p``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield (sub if sub in known else node.module), node.lineno


def test_the_runtime_imports_no_service() -> None:
    modules = _modules("daemon", "services")
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for name, path in _modules("daemon").items()
        if not (name == ENTRY_FLOOR or name.startswith(ENTRY_FLOOR + "."))
        for imported, line in _imports(path, modules)
        if imported == "services" or imported.startswith("services.")
    ]
    assert not offenders, "\n".join(offenders)


def test_no_module_import_cycle() -> None:
    modules = _modules("daemon", "services")
    graph = {
        name: {m for m, _ in _imports(path, modules, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_test_module_imports_another() -> None:
    tests = _modules("tests", "bench")
    offenders = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for path in tests.values()
        for imported, line in _imports(path, tests)
        if imported in tests and imported.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert not offenders, "\n".join(offenders)
