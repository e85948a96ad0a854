"""Helpers for tests, the demo and the benchmark: settings applied to a registry and its Celery
apps (:func:`configured`), an in-thread worker (:func:`in_thread_worker`), Celery worker processes
that can be killed whole and started again (:class:`WorkerProcess`), starting a run and waiting
for its end (:func:`run`), and waiting on a condition (:func:`wait_for`).

The private Redis servers live in :mod:`saga.testing.servers` and are re-exported here. The
fixtures of the pytest plugin (:mod:`saga.testing.pytest_plugin`) are built from these helpers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker
from celery.utils.nodenames import anon_nodename

from ..core import JSONObject, SagaState
from ..definition import Saga
from ..errors import SagaError, SagaTimeout
from ..registry import Registry, celery_config
from ..settings import ENV_PREFIX, Settings, is_memory_url
from ..store import answers, connect_node
from ..transport import point_at_broker
from .servers import (
    CLUSTER_PORTS,
    CLUSTER_SLOTS,
    RedisCluster,
    RedisServer,
    free_cluster_port,
    free_port,
    redis_server_binary,
)

T = TypeVar("T")

__all__ = [
    "CLUSTER_PORTS",
    "CLUSTER_SLOTS",
    "RedisCluster",
    "RedisServer",
    "WorkerProcess",
    "answers",
    "apps_of",
    "configured",
    "free_cluster_port",
    "free_port",
    "in_thread_worker",
    "point_app",
    "point_at_broker",
    "process_children",
    "redis_server_binary",
    "run",
    "start_worker_process",
    "stop_process_group",
    "wait_for",
    "worker_env",
]

#: The Celery settings :func:`point_app` sets on an app (and :func:`configured` restores).
_APP_KEYS = ("broker_url", "task_always_eager", "task_eager_propagates")


def wait_for(condition: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy, and return that; raise
    :class:`~saga.SagaTimeout` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SagaTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def apps_of(registry: Registry) -> list[Any]:
    """The Celery apps of every saga declared in ``registry``, each once, in declaration order."""
    apps: dict[int, Any] = {}
    for saga in registry.sagas():
        apps.setdefault(id(saga.app), saga.app)
    return list(apps.values())


def point_app(app: Any, settings: Settings) -> None:
    """Make a Celery app publish as ``settings`` say: to their broker, and on the in-memory tier
    in eager mode (every task runs inline, at once), else not."""
    config = celery_config(settings)
    app.conf.task_always_eager = bool(config.get("task_always_eager", False))
    app.conf.task_eager_propagates = bool(config.get("task_eager_propagates", False))
    point_at_broker(app, config["broker_url"])


@contextmanager
def configured(registry: Registry, settings: Settings, *apps: Any) -> Iterator[Settings]:
    """Run ``registry`` (and so every saga bound to it) with ``settings`` inside the block, the
    Celery ``apps`` publishing as they say (:func:`point_app`); restore both after. However the
    modules were imported, what runs inside is what ``settings`` say."""
    saved = registry.settings
    before = [{key: app.conf.get(key) for key in _APP_KEYS} for app in apps]
    registry.configure(settings)
    for app in apps:
        point_app(app, settings)
    try:
        yield settings
    finally:
        registry.configure(saved)
        for app, conf in zip(apps, before, strict=True):
            app.conf.task_always_eager = conf["task_always_eager"]
            app.conf.task_eager_propagates = conf["task_eager_propagates"]
            point_at_broker(app, conf["broker_url"])


@contextmanager
def in_thread_worker(
    app: Any, *, concurrency: int = 4, loglevel: str = "WARNING", shutdown_timeout: float = 30.0, **options: Any
) -> Iterator[Any]:
    """A Celery worker for ``app`` in a thread of this process (a threads pool), consuming from
    the broker the app points at; stopped at the end of the block — this worker only (Celery's
    ``start_worker`` stops through a process-wide flag that ends every in-process worker). It
    runs the app's sagas' watchdog too (as every worker does). ``options`` go to the worker."""
    if app.conf.task_always_eager:
        raise SagaError("this app runs its tasks inline (eager mode, the in-memory tier): it needs no worker")
    options.pop("perform_ping_check", None)
    setup_app_for_worker(app, loglevel, None)
    worker = TestWorkController(
        app=app,
        concurrency=concurrency,
        hostname=anon_nodename(),
        pool="threads",
        loglevel=loglevel,
        logfile=None,
        ready_callback=None,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        **options,
    )
    thread = threading.Thread(target=worker.start, daemon=True, name=f"celery-worker-{app.main}")
    thread.start()
    worker.ensure_started()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(shutdown_timeout)
        if thread.is_alive():
            raise SagaError(f"the in-thread worker of {app.main} did not stop within {shutdown_timeout} s")


def run(saga: Saga, payload: JSONObject, *, timeout: float = 30.0, **start: Any) -> SagaState:
    """Start a run of ``saga`` (``start``: its keyword arguments, e.g. ``key``) and return its
    final state (completed, compensated or failed); :class:`~saga.SagaTimeout` after ``timeout``
    seconds. On the in-memory tier the run has finished when ``start()`` returns."""
    return saga.wait(saga.start(payload, **start), timeout=timeout)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker or CLI subprocess that runs with ``settings``: this
    process's variables without its own ``SAGA_*`` ones, then ``settings``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**env, **settings.to_env(), **extra}


def tcp_ports(pids: list[int]) -> set[int]:
    """The local TCP ports of the sockets the processes ``pids`` hold, from /proc (empty where
    /proc does not say)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_for_disconnect(redis_url: str, ports: set[int], timeout: float = 10.0) -> None:
    """Wait until the Redis at ``redis_url`` has no client connected from one of ``ports`` (see
    :func:`tcp_ports`); :class:`~saga.SagaTimeout` after ``timeout`` seconds."""
    if not ports:
        return
    with connect_node(redis_url) as client:
        wait_for(
            lambda: not any(int(c["addr"].rsplit(":", 1)[1]) in ports for c in client.client_list()),
            timeout=timeout,
            what=f"Redis to drop the connections of ports {sorted(ports)}",
        )


def process_children(pid: int) -> list[int]:
    """The pids of a process's children (a prefork worker's pool), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class WorkerProcess:
    """``celery -A <app> worker`` in a process group of its own, running with ``settings`` (its
    environment is :func:`worker_env`): for crash tests, :meth:`kill` it (SIGKILL by default,
    the pool's children with it) and :meth:`restart` it. Output goes to ``log`` if given.

    Guarantees: after :meth:`kill` or :meth:`stop` returns, no process of the group runs; a
    memory URL is refused (the in-memory tier lives in one process).
    """

    def __init__(
        self,
        app: str,
        settings: Settings,
        *,
        name: str = "worker",
        pool: str = "prefork",
        concurrency: int = 2,
        queues: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if is_memory_url(settings.redis_url):
            raise SagaError(
                f"SAGA_REDIS_URL {settings.redis_url} lives in this process only: a worker process needs a "
                "Redis (e.g. the saga_redis fixture)"
            )
        self.app, self.settings, self.name, self.cwd, self.log = app, settings, name, cwd, log
        self.options: dict[str, Any] = {"pool": pool, "concurrency": concurrency, "queues": queues}
        self.env = worker_env(settings, **dict(env or {}))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker (a no-op while it runs); returns it."""
        if not self.alive:
            self.process = start_worker_process(
                self.app, self.env, name=self.name, cwd=self.cwd, log=self.log, **self.options
            )
        return self

    @property
    def alive(self) -> bool:
        """Whether the worker's main process runs."""
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The main process's pid (:class:`SagaError` if it was never started)."""
        if self.process is None:
            raise SagaError(f"worker {self.name} was never started")
        return self.process.pid

    def children(self) -> list[int]:
        """The pids of its pool's processes."""
        return process_children(self.pid) if self.alive else []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (SIGKILL: a crash, no shutdown code runs) and
        reap it, then wait until the broker (a Redis) has dropped the worker's connections.

        Why the wait: until Redis reads the close of a killed worker's socket, its blocked
        ``BRPOP`` still stands, and a message pushed then is popped for the dead worker (the
        watchdog resends that run's step only after ``SAGA_DISPATCH_TIMEOUT``)."""
        if self.process is None:
            return
        ports = tcp_ports([self.process.pid, *self.children()]) if self.alive else set()
        stop_process_group(self.process, sig)
        if self.settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            wait_for_disconnect(self.settings.broker_url, ports)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: running tasks finish first)."""
        self.kill(signal.SIGTERM)

    def restart(self, sig: int = signal.SIGKILL) -> WorkerProcess:
        """Kill the worker with ``sig`` if it runs, and start it again."""
        self.kill(sig)
        return self.start()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.stop()


def start_worker_process(
    app: str,
    env: Mapping[str, str],
    *,
    name: str,
    pool: str = "prefork",
    concurrency: int = 2,
    queues: str | None = None,
    loglevel: str = "WARNING",
    cwd: str | os.PathLike[str] | None = None,
    log: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``celery -A app worker`` in a process group of its own (so it can be killed whole).

    Output goes to ``log`` if given, else it is discarded.
    """
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        f"--pool={pool}",
        "-c",
        str(concurrency),
        f"--loglevel={loglevel}",
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if queues:
        args += ["-Q", queues]
    if log is None:
        return subprocess.Popen(
            args, env=dict(env), cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            args, env=dict(env), cwd=cwd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Send ``sig`` to a process group started by :func:`start_worker_process` and reap it;
    SIGKILL if it has not ended after ``timeout`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
