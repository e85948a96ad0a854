"""`celery -A workers worker` as a subprocess runs the example order saga; a killed one leaves no
consumer behind on the broker."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from saga import Settings, Status
from saga.registry import default_registry
from saga.store import connect_node
from saga.testing import (
    RedisServer,
    WorkerProcess,
    configured,
    free_port,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
from workers.app import app
from workers.orders import order


@pytest.fixture(scope="module")
def celery_worker_process(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    # Its own broker database: the suite's in-process worker (another app) must not take these
    # tasks, which it would discard as unregistered.
    mine = settings.replace(broker_url=settings.redis_url.rsplit("/", 1)[0] + "/1", watchdog_interval=0.5)
    with configured(default_registry(), mine, app):
        # a plain worker: no -Q, so every task of the saga reaches it
        proc = start_worker_process("workers", worker_env(mine), name=f"subproc{free_port()}")
        try:
            yield proc
        finally:
            stop_process_group(proc)


def test_a_prefork_worker_process_completes_and_compensates_orders(celery_worker_process: object) -> None:
    ok = order.start({"order_id": 1, "amount": 30})
    bad = order.start({"order_id": 2, "fail_at": "create_shipment"})
    flaky = order.start({"order_id": 3, "flaky": {"charge_payment": 1}})

    assert order.wait(ok, timeout=60).status is Status.COMPLETED
    compensated = order.wait(bad, timeout=60)
    assert compensated.status is Status.COMPENSATED
    assert [e["name"] for e in order.events(bad) if e["type"] == "compensation.succeeded"] == [
        "charge_payment",
        "reserve_inventory",
    ]
    assert order.wait(flaky, timeout=60).status is Status.COMPLETED
    for run_id in (ok, bad, flaky):
        assert order.rebuild(run_id) == order.get(run_id)


def test_a_killed_worker_process_leaves_no_consumer_on_the_broker(settings: Settings) -> None:
    # Given a worker blocked in BRPOP on a Redis of its own
    with RedisServer() as server, connect_node(server.url) as broker:
        mine = settings.replace(redis_url=server.url)
        worker = WorkerProcess("workers", mine, name=f"killed{free_port()}").start()
        try:

            def blocked() -> list[dict[str, str]]:
                return [c for c in broker.client_list() if c["cmd"] in ("brpop", "blpop")]

            wait_for(blocked, timeout=60, what="the worker to consume")
            # and whose pool was replaced after it connected (the new children hold the socket too)
            first = set(worker.children())
            for child in first:
                os.kill(child, signal.SIGKILL)
            wait_for(lambda: len(set(worker.children()) - first) == 2, timeout=60, what="a new pool")
            # When it is SIGKILLed
            worker.kill()
            # Then no connection of it still waits on the queue: a message pushed now is not
            # popped for the dead worker (it would wait out the dispatch timeout)
            assert not worker.alive
            assert blocked() == []
        finally:
            worker.kill()
