"""Crashes, one at a time, on real prefork workers with a private Redis (AOF, fsync always):
a whole worker SIGKILLed mid-step, a pool child SIGKILLed, Redis restarted mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from saga import Saga, Settings, Status
from saga.core import parse_iso
from saga.registry import default_registry
from saga.testing import (
    RedisServer,
    configured,
    process_children,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
from workers.app import app
from workers.orders import order as order_saga

ROOT = Path(__file__).resolve().parents[1]
LEASE = 1.5


@pytest.fixture(scope="module")
def redis_aof() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(scope="module")
def crash_settings(redis_aof: RedisServer, settings: Settings) -> Settings:
    """What this module's workers and this process run with: the private Redis, a short lease."""
    return settings.replace(redis_url=redis_aof.url, lease_seconds=LEASE, watchdog_interval=0.3)


@pytest.fixture
def order(crash_settings: Settings) -> Iterator[Saga]:
    """The example order saga, run from this process against the private Redis."""
    with configured(default_registry(), crash_settings, app):
        yield order_saga


class Workers:
    def __init__(self, settings: Settings) -> None:
        self.env = worker_env(settings, PYTHONPATH=str(ROOT))
        self.redis_url = settings.redis_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> subprocess.Popen[bytes]:
        proc = start_worker_process("workers", self.env, name=name, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process_group(proc, signal.SIGKILL)
        # A killed worker's BRPOP stays open on the server until Redis reads its socket's close, and
        # a message pushed in between is popped for the dead worker: the watchdog resends it, but only
        # after the dispatch timeout. The next test starts once this module's Redis has no consumer.
        with redis.Redis.from_url(self.redis_url) as client:
            wait_for(
                lambda: not any(c["cmd"] in ("brpop", "blpop") for c in client.client_list()),
                what="the killed workers' broker connections to close",
            )


@pytest.fixture
def workers(crash_settings: Settings) -> Iterator[Workers]:
    w = Workers(crash_settings)
    try:
        yield w
    finally:
        w.stop_all()


def in_step(saga: Saga, run_id: str, index: int) -> bool:
    state = saga.get(run_id)
    last = saga.events(run_id)[-1]
    return bool(state.current_step == index and last["type"] == "step.started")


def test_a_sigkilled_worker_is_resumed_by_another_and_the_run_completes(order: Saga, workers: Workers) -> None:
    first = workers.start("crash1")
    run_id = order.start({"order_id": 1, "sleep": {"charge_payment": 60}})
    wait_for(lambda: in_step(order, run_id, 1), timeout=30, what="charge_payment to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    workers.start("crash2")
    state = order.wait(run_id, timeout=60)
    assert state.status is Status.COMPLETED
    [resumed] = [e for e in order.events(run_id) if e["type"] == "saga.resumed"]
    assert resumed["reason"] == "lease expired: the worker running attempt 1 stopped renewing its lease"
    assert resumed["name"] == "charge_payment"
    assert resumed["from_version"] == 2  # after reserve_inventory committed
    assert [c.name for c in state.checkpoints] == ["reserve_inventory", "charge_payment", "create_shipment"]


def test_a_worker_killed_in_the_first_step_is_resumed_a_lease_later(
    order: Saga, workers: Workers, crash_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a run whose first step is under way
    first = workers.start("firststep1")
    run_id = order.start({"order_id": 3, "sleep": {"reserve_inventory": 60}})
    wait_for(lambda: in_step(order, run_id, 0), timeout=30, what="reserve_inventory to start")
    # Then the watchdog's deadline followed its lease, not the dispatch timeout of the start
    began = parse_iso(order.events(run_id)[-1]["at"])
    due = order.store.indexes.deadline(run_id)
    assert due is not None and due - began < crash_settings.dispatch_timeout / 2
    # When its worker is SIGKILLed and another starts
    os.killpg(first.pid, signal.SIGKILL)
    killed = time.time()
    first.wait()
    workers.start("firststep2")
    # Then the run resumes from version 1, saying its lease expired, and completes
    state = order.wait(run_id, timeout=60)
    assert state.status is Status.COMPLETED
    [resumed] = [e for e in order.events(run_id) if e["type"] == "saga.resumed"]
    assert (resumed["name"], resumed["from_version"]) == ("reserve_inventory", 1)
    assert resumed["reason"] == "lease expired: the worker running attempt 1 stopped renewing its lease"
    with capsys.disabled():
        print(
            f"\nfirst-step recovery: resumed {parse_iso(resumed['at']) - killed:.2f} s after the kill (lease {LEASE} s)"
        )


def test_a_sigkilled_pool_child_does_not_lose_the_run(order: Saga, workers: Workers) -> None:
    proc = workers.start("child1")
    run_id = order.start({"order_id": 2, "sleep": {"reserve_inventory": 60}})
    wait_for(lambda: in_step(order, run_id, 0), timeout=30, what="reserve_inventory to start")
    for child in process_children(proc.pid):
        os.kill(child, signal.SIGKILL)
    state = order.wait(run_id, timeout=60)
    assert state.status is Status.COMPLETED
    assert order.rebuild(run_id) == state


def test_a_redis_restart_loses_no_committed_transition(order: Saga, workers: Workers, redis_aof: RedisServer) -> None:
    workers.start("restart1")
    ids = [order.start({"order_id": n, "sleep": {"charge_payment": 2}}) for n in range(5)]
    wait_for(lambda: all(order.get(i).version >= 2 for i in ids), timeout=30, what="every run to commit its first step")
    before = {i: order.history(i) for i in ids}
    redis_aof.restart()
    for run_id in ids:
        state = order.wait(run_id, timeout=90)
        assert state.status is Status.COMPLETED
        history = order.history(run_id)
        assert history[: len(before[run_id])] == before[run_id]  # nothing committed was lost or rewritten
        assert [s.version for s in history] == list(range(1, state.version + 1))
        assert order.rebuild(run_id) == state
