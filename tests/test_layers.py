"""The layer check of ``make lint`` (tests/lint_layers.py) catches what it exists to catch, and
the package keeps it; plus the public surface in ``saga.__all__``."""

from __future__ import annotations

from pathlib import Path

import saga
from tests.lint_layers import check


def package(tmp_path: Path, **modules: str) -> Path:
    """A throw-away ``saga/`` with the given module texts: ``store__writes`` is ``saga/store/writes.py``."""
    root = tmp_path / "saga"
    root.mkdir()
    (root / "__init__.py").write_text("")
    for name, text in modules.items():
        path = root.joinpath(*name.split("__")).with_suffix(".py") if "__" in name.strip("_") else root / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != root and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("__all__: list[str] = []\n")
        path.write_text(text)
    return root


def nothing_outside(tmp_path: Path) -> tuple[Path, ...]:
    (tmp_path / "outside").mkdir(exist_ok=True)
    return (tmp_path / "outside",)


def test_the_package_keeps_the_house_plan() -> None:
    assert check() == []


def test_an_upward_import_is_refused(tmp_path: Path) -> None:
    root = package(tmp_path, core__state="from ..engine import Runtime\n", engine__commit="")
    problems = check(root, nothing_outside(tmp_path))
    assert any("core (pure rules: what a run is and what happens next) may not import engine" in p for p in problems)


def test_a_private_module_across_packages_is_refused(tmp_path: Path) -> None:
    root = package(tmp_path, registry="from .store.writes import RedisStore\n", store__writes="class RedisStore: ...\n")
    [problem] = check(root, nothing_outside(tmp_path))
    assert "imports saga.store.writes, private to saga.store: import from its face saga.store" in problem


def test_a_name_missing_from_the_face_is_refused(tmp_path: Path) -> None:
    root = package(
        tmp_path,
        registry="from .store import RedisStore, lane_id\n",
        store____init__='from .writes import RedisStore, lane_id\n\n__all__ = ["RedisStore"]\n',
        store__writes="",
    )
    [problem] = check(root, nothing_outside(tmp_path))
    assert "lane_id not in the face of saga.store" in problem


def test_tests_and_examples_use_the_faces_too(tmp_path: Path) -> None:
    root = package(tmp_path, store__schema="")
    outside = nothing_outside(tmp_path)
    (outside[0] / "test_x.py").write_text("from saga.store.schema import run_keys\n")
    [problem] = check(root, outside)
    assert problem.startswith("outside/test_x.py:1: imports saga.store.schema, private to saga.store")


def test_packages_of_one_independent_layer_do_not_import_each_other(tmp_path: Path) -> None:
    root = package(tmp_path, archive__sql="from ..engine import Runtime\n", engine__commit="")
    problems = check(root, nothing_outside(tmp_path))
    assert any("archive (moving runs; the SQL archive) may not import engine" in p for p in problems)


def test_a_function_local_import_of_another_unit_is_refused(tmp_path: Path) -> None:
    text = "def f() -> None:\n    from ..store import RedisStore\n"
    [problem] = check(package(tmp_path, engine__commit=text, store__writes=""), nothing_outside(tmp_path))
    assert "function-local import of saga.store" in problem


def test_a_face_may_load_its_own_module_lazily(tmp_path: Path) -> None:
    text = "def __getattr__(name: str) -> object:\n    from .sql import Archive\n    return Archive\n"
    assert check(package(tmp_path, archive____init__=text, archive__sql=""), nothing_outside(tmp_path)) == []


def test_an_annotation_only_import_may_point_up(tmp_path: Path) -> None:
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..definition import Saga\n"
    assert check(package(tmp_path, engine__commit=text, definition=""), nothing_outside(tmp_path)) == []


def test_a_library_outside_its_adapter_is_refused(tmp_path: Path) -> None:
    [problem] = check(package(tmp_path, engine__commit="import redis\n"), nothing_outside(tmp_path))
    assert "imports redis, which only store may import" in problem


def test_a_cycle_is_named(tmp_path: Path) -> None:
    root = package(tmp_path, engine__commit="from . import delivery\n", engine__delivery="from . import commit\n")
    problems = check(root, nothing_outside(tmp_path))
    assert any(p.startswith("import cycle: ") for p in problems)


def test_a_unit_outside_the_plan_or_a_long_module_is_refused(tmp_path: Path) -> None:
    root = package(tmp_path, newthing="", store__writes="x = 1\n" * 601)
    problems = check(root, nothing_outside(tmp_path))
    assert any("newthing.py: newthing is in no layer" in p for p in problems)
    assert any("store/writes.py: 601 lines" in p for p in problems)


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
