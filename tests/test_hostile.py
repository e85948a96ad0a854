"""Hostile input and poison messages, against a real prefork worker on a private Redis: the worker
survives, every run ends or waits visibly, nothing loops; and the same rules in-process."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from saga import Settings, Status, StoreFull
from saga.registry import default_registry
from saga.testing import (
    RedisServer,
    configured,
    free_port,
    process_children,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
from tests.helpers import Samples, scrape
from workers.app import app as workers_app
from workers.orders import order

ROOT = Path(__file__).resolve().parents[1]
TASK = "saga.order.reserve_inventory"


# --- a worker of its own -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def mine(server: RedisServer, settings: Settings) -> Iterator[Settings]:
    """This module's settings (its own Redis, store and broker), and this process using them."""
    own = settings.replace(
        redis_url=server.url, dispatch_timeout=3, watchdog_interval=0.3, lease_seconds=1.5, metrics_port=free_port()
    )
    with configured(default_registry(), own, workers_app):
        yield own


class Worker:
    """``celery -A workers worker`` (prefork, 2 children), logging to a file."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        self.proc = start_worker_process(
            "workers", worker_env(settings), name=f"hostile{free_port()}", cwd=ROOT, log=log, loglevel="INFO"
        )
        self.metrics = f"http://127.0.0.1:{settings.metrics_port}/metrics"

    def pids(self) -> set[int]:
        return {self.proc.pid, *process_children(self.proc.pid)}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def scrape(self) -> Samples:
        return scrape(self.metrics)


@pytest.fixture(scope="module")
def hostile_worker(mine: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(mine, tmp_path_factory.mktemp("hostile") / "worker.log")
    try:
        wait_for(lambda: w.scrape(), timeout=60, what="the worker to be ready")
        wait_for(lambda: len(w.pids()) == 3, timeout=30, what="the pool children")
        yield w
    finally:
        stop_process_group(w.proc)


def publish(url: str, body: Any, *, content_type: str = "application/json", **headers: Any) -> None:
    """Publish one raw message to Celery's default queue, as anybody with broker access can."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    message_headers: dict[str, Any] = {"task": TASK, "id": str(uuid.uuid4()), **headers}
    with Connection(url) as conn:  # type: ignore[no-untyped-call]
        conn.Producer().publish(
            raw,
            exchange="",
            routing_key="celery",
            content_type=content_type,
            content_encoding="utf-8",
            headers=message_headers,
        )


# --- poison messages -----------------------------------------------------------------------------


def test_poison_messages_are_rejected_and_the_worker_goes_on(hostile_worker: Worker, mine: Settings) -> None:
    worker = hostile_worker
    # Given a real run, so that a poison can name it
    named = order.start({"order_id": 1})
    assert order.wait(named, timeout=30).status is Status.COMPLETED
    pids = worker.pids()
    poisons: list[tuple[Any, dict[str, Any]]] = [
        ("hello", {}),
        (5, {}),
        (None, {}),
        ([["x"], {}], {}),
        ({"args": [named], "kwargs": {}}, {}),
        ([[], {}, {}], {}),
        ([[12345], {}, {}], {}),
        ([[named, "extra"], {}, {}], {}),
        ([[named], {"attempt": True}, {}], {}),
        ([[named], {"attempt": "2"}, {}], {}),
        ([[named], {"version": 0}, {}], {}),
        ([["r" * 1_000_000], {}, {}], {}),
        ([[named], {}, {"callbacks": [{"task": "celery.ping"}]}], {}),
        ([[named], {}, {}], {"id": ["not", "hashable"]}),
        ([[named], {}, {}], {"eta": "tomorrow"}),
        ([[named], {}, {}], {"timelimit": "ab"}),
    ]
    for body, headers in poisons:
        publish(mine.broker_url, body, **headers)
    publish(mine.broker_url, b"\x80not json at all", content_type="application/json")
    publish(mine.broker_url, b"cos\nsystem\n(S'id'\ntR.", content_type="application/x-python-serialize")
    # When real runs are started right after them
    runs = [order.start({"order_id": n}) for n in range(2, 7)]
    # Then they complete, on the same worker processes
    for run_id in runs:
        assert order.wait(run_id, timeout=60).status is Status.COMPLETED
    assert worker.alive() and worker.pids() == pids
    # and every poison was rejected, counted, one short log line each
    counted = ("saga_poison_messages_total", (("task", TASK),))
    wait_for(lambda: worker.scrape().get(counted, 0) >= len(poisons) + 2, timeout=30, what="every poison counted")
    assert worker.scrape()[counted] == len(poisons) + 2
    lines = worker.log.read_text(errors="replace").splitlines()
    rejected = [line for line in lines if "rejected a message for saga.order.reserve_inventory" in line]
    assert len(rejected) == len(poisons) + 2
    assert max(len(line) for line in lines) < 2000
    assert not [line for line in lines if "Unrecoverable" in line or "CRITICAL" in line]
    # and the poisons that named an existing run left an event on it
    reasons = [e["reason"] for e in order.events(named) if e["type"] == "saga.message_rejected"]
    assert len(reasons) >= 6 and any("attempt must be a whole number, got True" in r for r in reasons)
    assert order.get(named).status is Status.COMPLETED  # nothing moved it


# --- a full Redis --------------------------------------------------------------------------------


def test_a_worker_survives_its_store_and_broker_filling_up_and_every_run_finishes(
    hostile_worker: Worker, server: RedisServer
) -> None:
    worker = hostile_worker
    client = redis.Redis.from_url(server.url)
    pids = worker.pids()
    # Given a backlog of runs in flight on a worker whose broker is the store's Redis
    runs = [order.start({"order_id": n, "sleep": {"reserve_inventory": 0.5}}) for n in range(100, 112)]
    wait_for(lambda: order.get(runs[0]).version > 1, timeout=30, what="the first run to move")
    # When that Redis is over maxmemory (noeviction), by more than any delete frees: every write is refused
    client.set("ballast", "x" * 4_000_000)
    client.config_set("maxmemory-policy", "noeviction")
    # a limit no memory freed can get under (finishing runs, an AOF rewrite's buffer released):
    # no write fits until it is lifted
    client.config_set("maxmemory", 1)
    try:
        wait_for(
            lambda: "is full (maxmemory reached)" in worker.log.read_text(errors="replace"),
            timeout=60,
            what="the worker to meet the full Redis",
        )
        # Then starting a run is one clear error, nothing written ...
        with pytest.raises(StoreFull, match="is full \\(maxmemory reached\\) and refuses writes"):
            order.start({"order_id": 999})
        # ... and the worker is still there
        assert worker.alive()
    finally:
        # When memory is raised
        client.config_set("maxmemory", 0)
    # Then every run finishes, on the same worker
    for run_id in runs:
        assert order.wait(run_id, timeout=120).status is Status.COMPLETED
    assert worker.alive() and worker.pids() == pids
    lines = worker.log.read_text(errors="replace").splitlines()
    assert not [line for line in lines if "Unrecoverable" in line]
    client.delete("ballast")
