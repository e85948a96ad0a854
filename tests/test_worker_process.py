"""`celery -A workers worker` as a subprocess runs the example order saga."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from saga import Status
from saga.testing import free_port, start_worker_process, stop_process_group
from tests.conftest import rebind


@pytest.fixture(scope="module")
def celery_worker_process(redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    # Its own broker database: the suite's in-process worker (another app) must not take these
    # tasks, which it would discard as unregistered.
    broker = redis_url.rsplit("/", 1)[0] + "/1"
    env = {**os.environ, "SAGA_REDIS_URL": redis_url, "SAGA_BROKER_URL": broker,
           "SAGA_METRICS_PORT": "0", "SAGA_WATCHDOG_INTERVAL": "0.5"}
    from workers.app import app

    saved = app.conf.broker_url
    rebind(app, broker)
    # a plain worker: no -Q, so every task of the saga reaches it
    proc = start_worker_process("workers", env, name=f"subproc{free_port()}")
    try:
        yield proc
    finally:
        stop_process_group(proc)
        rebind(app, saved)


def test_a_prefork_worker_process_completes_and_compensates_orders(celery_worker_process: object) -> None:
    from workers.orders import order

    ok = order.start({"order_id": 1, "amount": 30})
    bad = order.start({"order_id": 2, "fail_at": "create_shipment"})
    flaky = order.start({"order_id": 3, "flaky": {"charge_payment": 1}})

    assert order.wait(ok, timeout=60).status is Status.COMPLETED
    compensated = order.wait(bad, timeout=60)
    assert compensated.status is Status.COMPENSATED
    assert [e["name"] for e in order.events(bad) if e["type"] == "compensation.succeeded"] == [
        "charge_payment", "reserve_inventory"]
    assert order.wait(flaky, timeout=60).status is Status.COMPLETED
    for run_id in (ok, bad, flaky):
        assert order.rebuild(run_id) == order.get(run_id)
