"""The layer check of ``make lint`` (tests/lint_layers.py) catches what it exists to catch, and
the package keeps it; plus the public surface in ``saga.__all__``."""

from __future__ import annotations

from pathlib import Path

import saga
from tests.lint_layers import check


def package(tmp_path: Path, **modules: str) -> Path:
    """A throw-away ``saga/`` with the given module texts."""
    root = tmp_path / "saga"
    root.mkdir()
    for name, text in modules.items():
        (root / f"{name}.py").write_text(text)
    return root


def test_the_package_keeps_the_house_plan() -> None:
    assert check() == []


def test_an_upward_import_is_refused(tmp_path: Path) -> None:
    root = package(tmp_path, state="from .engine import Runtime\n", engine="")
    [problem] = check(root)
    assert "state (core (pure: no I/O)) may not import engine (engine, feed, archiver and tiered reads)" in problem


def test_adapters_do_not_import_each_other(tmp_path: Path) -> None:
    [problem] = check(package(tmp_path, tasks="from . import store\n", store=""))
    assert "tasks" in problem and "may not import store" in problem


def test_a_function_local_saga_import_is_refused(tmp_path: Path) -> None:
    [problem] = check(package(tmp_path, engine="def f() -> None:\n    from . import store\n", store=""))
    assert "function-local import of saga.store" in problem


def test_an_annotation_only_import_may_point_up(tmp_path: Path) -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .definition import Saga\n"
    assert check(package(tmp_path, engine=text, definition="")) == []


def test_a_library_outside_its_adapter_is_refused(tmp_path: Path) -> None:
    [problem] = check(package(tmp_path, engine="import redis\n"))
    assert "imports redis, which only aio, connection, indexes, notify, store may import" in problem


def test_a_cycle_is_named(tmp_path: Path) -> None:
    problems = check(package(tmp_path, engine="from . import delivery\n", delivery="from . import engine\n"))
    assert any(p.startswith("import cycle: ") for p in problems)


def test_a_module_outside_the_plan_or_too_long_is_refused(tmp_path: Path) -> None:
    problems = check(package(tmp_path, newthing="", store="x = 1\n" * 401))
    assert any("newthing.py: not in any layer" in p for p in problems)
    assert any("store.py: 401 lines" in p for p in problems)


def test_the_public_surface_is_exactly_all_and_each_name_is_documented() -> None:
    public = {name for name in dir(saga) if not name.startswith("_")} - {
        # submodules, importable as saga.<name>
        name
        for name in dir(saga)
        if type(getattr(saga, name)).__name__ == "module"
    }
    assert public == set(saga.__all__)
    for name in saga.__all__:
        assert (getattr(saga, name).__doc__ or "").strip(), f"saga.{name} has no docstring"
