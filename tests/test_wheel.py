"""The distribution as a user gets it: ``python -m build`` makes an sdist and, from that sdist, a wheel;
``twine check --strict`` passes on both; the wheel holds the package, its Lua scripts, its Alembic
migrations, ``py.typed`` and the LICENSE, and nothing of ``workers/``, ``tests/`` or ``bench/``.

Then the wheel is installed with the ``memory`` extra only (no archive) into an empty virtual
environment, at the versions of ``uv.lock``, and used from a folder outside the repository:
``saga --version``, and a two-step saga on ``memory://`` that completes, and that compensates when
its second step raises ``PermanentError``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSION: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
EXTRAS = {"archive", "postgres", "flower", "memory", "all"}

#: Files that must be in both the sdist and the wheel: the package data code does not import.
DATA_FILES = [
    "saga/py.typed",
    "saga/store/lua/commit.lua",
    "saga/archive/migrations/env.py",
    "saga/archive/migrations/script.py.mako",
    "saga/archive/migrations/versions/0001_initial.py",
]

#: What the user runs in the new environment: it prints one JSON line for the test to check.
USER_SCRIPT = """
import importlib.util
import json
import os
import sys

import saga

imported_sqlalchemy = "sqlalchemy" in sys.modules

from saga import PermanentError, Saga, create_app

app = create_app("wheel_check")
released = []
order = Saga("order", app=app)


@order.step
def reserve(payload, ctx):
    return {"hold": "hold-" + str(payload["order_id"])}


@reserve.compensate
def release(payload, ctx):
    released.append(payload["hold"])


@order.step()
def charge(payload, ctx):
    if payload.get("declined"):
        raise PermanentError("card declined")
    return {"charged": payload["amount"]}


done = order.wait(order.start({"order_id": 1, "amount": 30}), timeout=30)
released_before = list(released)
undone = order.wait(order.start({"order_id": 2, "amount": 5, "declined": True}), timeout=30)
print(json.dumps({
    "saga_file": saga.__file__,
    "redis_url": os.environ["SAGA_REDIS_URL"],
    "sqlalchemy_imported_by_import_saga": imported_sqlalchemy,
    "sqlalchemy_imported_at_end": "sqlalchemy" in sys.modules,
    "sqlalchemy_installed": importlib.util.find_spec("sqlalchemy") is not None,
    "done": {"status": done.status.value, "payload": done.payload, "released": released_before},
    "undone": {
        "status": undone.status.value,
        "error_type": undone.error.type if undone.error else None,
        "error_step": undone.error.name if undone.error else None,
        "released": released[len(released_before):],
    },
}))
"""


@dataclass(frozen=True)
class Dists:
    """The built files."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    """An empty virtual environment with the wheel installed, and a folder outside the repository."""

    venv: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def run(cmd: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``, failing the test with its output if it exits non-zero."""
    args = [str(part) for part in cmd]
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points Python or saga at this checkout."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SAGA_")}
    return {**env, **extra}


def find_uv() -> str | None:
    local = REPO / ".uv" / "bin" / "uv"
    return str(local) if local.is_file() and os.access(local, os.X_OK) else shutil.which("uv")


def sdist_names(sdist: Path) -> set[str]:
    """The sdist's paths, without its top folder (``saga-X.Y.Z/``)."""
    with tarfile.open(sdist) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as whl:
        return set(whl.namelist())


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist, and the wheel built from it (``python -m build``'s default), built once."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=out)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return Dists(sdist=sdists[0], wheel=wheels[0])


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel with the ``memory`` extra in an empty venv, pinned to uv.lock's versions."""
    uv = find_uv()
    if uv is None:
        pytest.skip("uv not found (neither .uv/bin/uv nor uv on PATH): cannot make the test environment")
    root = tmp_path_factory.mktemp("installed")
    venv, workdir, constraints = root / "venv", root / "work", root / "constraints.txt"
    workdir.mkdir()
    env = clean_env()
    run(
        [uv, "export", "--frozen", "--all-extras", "--no-hashes", "--no-emit-project"]
        + ["--format", "requirements-txt", "--quiet", "-o", constraints],
        cwd=REPO,
        env=env,
    )
    run([uv, "venv", "--quiet", "--python", sys.executable, venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    run(
        [uv, "pip", "install", "--quiet", "--python", python, f"{dists.wheel}[memory]", "-c", constraints],
        cwd=root,
        env=env,
    )
    return Installed(venv=venv, workdir=workdir)


# --- the files ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_twine_check_strict_passes(dists: Dists) -> None:
    result = run([sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel], cwd=dists.wheel.parent)
    assert result.stdout.count("PASSED") == 2, result.stdout


@pytest.mark.timeout(300)
def test_the_sdist_holds_the_package_data(dists: Dists) -> None:
    names = sdist_names(dists.sdist)
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names
    assert [f for f in DATA_FILES if f not in names] == []


@pytest.mark.timeout(300)
def test_the_wheel_holds_the_package_and_nothing_else(dists: Dists) -> None:
    names = wheel_names(dists.wheel)
    assert dists.wheel.name == f"saga-{VERSION}-py3-none-any.whl"
    assert [f for f in DATA_FILES if f not in names] == []
    lua = {Path(n).name for n in names if n.startswith("saga/store/lua/")}
    assert lua == {p.name for p in (REPO / "saga" / "store" / "lua").glob("*.lua")}
    assert f"saga-{VERSION}.dist-info/licenses/LICENSE" in names
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"saga", f"saga-{VERSION}.dist-info"}, top  # no workers/, tests/, bench/
    assert not [n for n in names if n.startswith(("workers/", "tests/", "bench/"))]


@pytest.mark.timeout(300)
def test_the_wheel_metadata(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        text = whl.read(f"saga-{VERSION}.dist-info/METADATA").decode()
    metadata = HeaderParser().parsestr(text)
    assert metadata["Name"] == "saga"
    assert metadata["Version"] == VERSION
    assert set(metadata.get_all("Provides-Extra") or []) == EXTRAS
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    with zipfile.ZipFile(dists.wheel) as whl:
        entry_points = whl.read(f"saga-{VERSION}.dist-info/entry_points.txt").decode()
    assert "saga = saga.cli:main" in entry_points
    assert "saga = saga.testing.pytest_plugin" in entry_points


@pytest.mark.timeout(300)
def test_building_leaves_the_checkout_clean(dists: Dists) -> None:
    """setuptools writes ``saga.egg-info/`` (and may write ``build/``) into the source tree: both ignored."""
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {"*.egg-info/", "build/", "dist/"} <= ignored
    if shutil.which("git") and (REPO / ".git").exists():
        left = [p for p in ("build", "dist", "saga.egg-info") if (REPO / p).exists()]
        for path in left:  # check-ignore reads only: it changes neither the index nor the tree
            run(["git", "--no-optional-locks", "check-ignore", "--quiet", path], cwd=REPO)


# --- installed ---------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_saga_version(installed: Installed) -> None:
    result = run([installed.bin / "saga", "--version"], cwd=installed.workdir, env=clean_env())
    assert result.stdout.strip() == f"saga {VERSION}"


@pytest.mark.timeout(300)
def test_a_saga_runs_on_memory_from_the_wheel(installed: Installed) -> None:
    script = installed.workdir / "user_saga.py"
    script.write_text(USER_SCRIPT)
    result = run([installed.bin / "python", script], cwd=installed.workdir, env=clean_env(SAGA_REDIS_URL="memory://"))
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])

    # the installed copy, not this checkout's saga/
    assert Path(report["saga_file"]).resolve().is_relative_to(installed.venv.resolve()), report["saga_file"]
    assert report["redis_url"] == "memory://"
    # the memory extra alone: no archive installed, and none needed
    assert report["sqlalchemy_installed"] is False
    assert report["sqlalchemy_imported_by_import_saga"] is False
    assert report["sqlalchemy_imported_at_end"] is False

    assert report["done"] == {
        "status": "completed",
        "payload": {"order_id": 1, "amount": 30, "hold": "hold-1", "charged": 30},
        "released": [],
    }
    assert report["undone"] == {
        "status": "compensated",
        "error_type": "PermanentError",
        "error_step": "charge",
        "released": ["hold-2"],
    }


@pytest.mark.timeout(300)
def test_an_archive_url_without_the_extra_is_refused_in_one_line(installed: Installed) -> None:
    env = clean_env(SAGA_REDIS_URL="memory://", SAGA_ARCHIVE_URL="sqlite:///runs.db")
    proc = subprocess.run(
        [installed.bin / "saga", "list"], cwd=installed.workdir, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "SAGA_ARCHIVE_URL needs sqlalchemy" in lines[0] and "pip install 'saga[archive]'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (installed.workdir / "runs.db").exists()
