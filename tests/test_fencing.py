"""A refused commit touches nothing: an attempt that lost its lease cannot take the run off the
watchdog's list, so a run whose next holder dies is still resumed (real prefork workers, SIGSTOP).

The workers use a broker of their own, so the suite's in-process worker never takes their tasks;
the store is the suite's (one Redis, or the Redis Cluster with TEST_STORE=cluster).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import Settings, Status
from saga.core import policy
from saga.registry import default_registry
from saga.store import Client
from saga.testing import RedisServer, configured, start_worker_process, stop_process_group, wait_for, worker_env
from tests.sagas import app, ledger, trip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fencing_settings(settings: Settings) -> Iterator[Settings]:
    """The suite's store, a broker of this module's own, a short lease and a quick watchdog."""
    with RedisServer() as broker:
        yield settings.replace(broker_url=broker.url, lease_seconds=1.5, watchdog_interval=0.3)


def started(run_id: str, step: str, attempt: int) -> bool:
    return any(
        e["type"] == "step.started" and e.get("name") == step and e["attempt"] == attempt for e in trip.events(run_id)
    )


def test_a_refused_last_commit_leaves_the_run_to_the_watchdog(
    fencing_settings: Settings, redis_client: Client, tmp_path: Path
) -> None:
    env = worker_env(fencing_settings, PYTHONPATH=str(ROOT))
    procs: list[subprocess.Popen[bytes]] = []

    def worker(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.log"
        name = f"{name}{uuid.uuid4().hex[:6]}"
        procs.append(start_worker_process("tests.sagas", env, name=name, concurrency=1, cwd=ROOT, log=log))
        return procs[-1], log

    gate = f"gate:{uuid.uuid4()}:{{attempt}}"
    try:
        with configured(default_registry(), fencing_settings, app):
            # Given worker A runs the last step of a run, and is stopped (SIGSTOP) past its lease
            a, a_log = worker("fenceA")
            run_id = trip.start({"block": {"pay": gate}})
            wait_for(lambda: started(run_id, "pay", 1), timeout=30, what="A to start the last step")
            os.killpg(a.pid, signal.SIGSTOP)
            try:
                # When worker B's watchdog resumes the run and B runs the step again
                b, _ = worker("fenceB")
                wait_for(lambda: started(run_id, "pay", 2), timeout=30, what="B to take the run over")
                wait_for(lambda: ledger(run_id).count("forward:pay") == 2, timeout=30, what="B's body to act")
            finally:
                os.killpg(a.pid, signal.SIGCONT)
            # and A wakes up, finishes its body and commits (refused: B's resume fenced it out)
            redis_client.rpush(gate.format(attempt=1), "go")
            wait_for(
                lambda: "commit refused (fenced)" in a_log.read_text(), timeout=30, what="A's commit to be refused"
            )
            # and B is SIGKILLed before it commits
            stop_process_group(b, signal.SIGKILL)
            # Then the run is still watched: A's watchdog resumes it once B's lease lapses, and it completes
            wait_for(lambda: started(run_id, "pay", 3), timeout=30, what="the run to be resumed after B died")
            redis_client.rpush(gate.format(attempt=3), "go")
            state = trip.wait(run_id, timeout=30)
    finally:
        for proc in procs:
            stop_process_group(proc, signal.SIGKILL)
    assert state.status is Status.COMPLETED
    events = trip.events(run_id)
    assert [e["name"] for e in events if e["type"] == "step.succeeded"] == ["flight", "hotel", "car", "pay"]
    reasons = [e["reason"] for e in events if e["type"] == "saga.resumed"]
    assert [policy.resume_cause(reason) for reason in reasons] == ["lease expired", "lease expired"]
    assert ledger(run_id).count("forward:pay") == 3  # A, B, and the resumed attempt: one commit among them
