"""Safe change, on real prefork workers and a private Redis: a money transfer deployed as
version 1, then version 2; runs park instead of failing, operators can always unwind, and the
ledger balances at every point (tests/transfer.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from saga import Saga, Settings, Status, create_app
from saga.registry import Registry
from saga.testing import RedisServer, start_worker_process, stop_process_group, wait_for, worker_env
from tests import transfer

ROOT = Path(__file__).resolve().parents[1]
START = {"alice": 1000, "bob": 0}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


@pytest.fixture(scope="module")
def mine(server: RedisServer) -> Settings:
    """This module's settings: its own Redis (store and broker), a short lease and dispatch timeout."""
    return Settings(
        redis_url=server.url,
        lease_seconds=1.5,
        watchdog_interval=0.3,
        dispatch_timeout=3,
        retry_backoff=0.1,
        retry_backoff_max=0.5,
        metrics_port=0,
    )


@pytest.fixture
def ledger_path(tmp_path: Path) -> str:
    path = str(tmp_path / "ledger.db")
    transfer.open_accounts(path, START)
    return path


class Deployment:
    """Worker processes of ``tests.transfer``, each declaring the versions it is given."""

    def __init__(self, settings: Settings, ledger_path: str) -> None:
        self.settings = settings
        self.ledger_path = ledger_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, versions: str) -> dict[str, str]:
        return worker_env(
            self.settings,
            TRANSFER_VERSIONS=versions,
            TRANSFER_LEDGER=self.ledger_path,
            PYTHONPATH=str(ROOT),
        )

    def start(self, name: str, versions: str) -> None:
        self.procs[name] = start_worker_process("tests.transfer", self.env(versions), name=name, cwd=ROOT)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        stop_process_group(self.procs.pop(name), sig)

    def cli(self, *args: str, versions: str = "1,2") -> subprocess.CompletedProcess[str]:
        """``saga ARGS --app tests.transfer`` as an operator runs it, loading ``versions``."""
        return subprocess.run(
            [sys.executable, "-m", "saga", "--app", "tests.transfer", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env(versions),
            timeout=60,
        )


@pytest.fixture
def deployment(mine: Settings, ledger_path: str) -> Iterator[Deployment]:
    d = Deployment(mine, ledger_path)
    try:
        yield d
    finally:
        for name in list(d.procs):
            d.stop(name, signal.SIGKILL)


def client(settings: Settings, *versions: int) -> Saga:
    """The transfer saga as a client process that declares ``versions`` sees it (start() uses the highest)."""
    app = create_app(f"client-{'-'.join(map(str, versions))}", settings)
    return transfer.declare(versions, app=app, registry=Registry(settings))[max(versions)]


def parked(saga: Saga) -> set[str]:
    return {p.run_id for p in saga.store.indexes.parked()}


def event_types(saga: Saga, run_id: str) -> list[str]:
    return [e["type"] for e in saga.events(run_id)]


def assert_balanced(ledger_path: str, saga: Saga, run_ids: list[str]) -> None:
    """Every finished transfer moved the amount from alice to bob, or moved nothing."""
    moved = 0
    for run_id in run_ids:
        state = saga.get(run_id)
        net = {account: 0 for account in START}
        for _, account, amount in transfer.movements(ledger_path, run_id):
            net[account] += amount
        if state.status is Status.COMPLETED:
            assert net == {"alice": -10, "bob": 10}, (run_id, net)
            moved += 10
        else:
            assert state.status is Status.COMPENSATED and net == {"alice": 0, "bob": 0}, (run_id, state.status, net)
    assert transfer.balances(ledger_path) == {"alice": START["alice"] - moved, "bob": moved}


def test_a_deploy_without_v1_parks_its_runs_and_a_deploy_with_both_versions_finishes_them(
    deployment: Deployment, mine: Settings, ledger_path: str, server: RedisServer
) -> None:
    gates = redis.Redis.from_url(server.url)
    v1 = client(mine, 1)
    both = client(mine, 1, 2)
    # Given a worker with version 1, and four transfers in flight: each debited, two holding at
    # their credit (the worker's two pool children), two whose credit waits in the queue
    deployment.start("v1only", "1")
    ids = [v1.start({"from": "alice", "to": "bob", "amount": 10, "gate": f"gate:{i}"}) for i in range(4)]
    wait_for(lambda: len(transfer.movements(ledger_path)) == 4, timeout=30, what="the four debits")
    wait_for(lambda: sum(event_types(v1, i)[-1] == "step.started" for i in ids) == 2, timeout=30, what="two credits")
    # When version 1 is removed: its worker killed, one with only version 2 started
    deployment.stop("v1only", signal.SIGKILL)
    deployment.start("v2only", "2")
    # Then every run parks (its queued credit, or its lapsed lease), saying why; none fails
    wait_for(lambda: parked(v1) == set(ids), timeout=60, what="all four runs to park")
    for run_id in ids:
        state = v1.get(run_id)
        assert state.status is Status.RUNNING and state.definition_version == 1
        [event] = [e for e in v1.events(run_id) if e["type"] == "saga.parked"]
        assert "no worker here has version 1 of saga 'transfer' (here: 2)" in event["reason"]
    assert v1.store.indexes.dead_letter_depth() == 0
    listed = json.loads(deployment.cli("list", "--parked", "--json").stdout)
    assert {r["id"] for r in listed} == set(ids) and all("version 1" in r["parked"] for r in listed)
    deployment.stop("v2only")
    # and no money moved while they waited: four debits, nothing else
    assert [amount for _, _, amount in transfer.movements(ledger_path)] == [-10] * 4
    assert transfer.balances(ledger_path) == {"alice": 960, "bob": 0}
    # When a worker with both versions starts and the gates open
    deployment.start("both", "1,2")
    for i in range(4):
        gates.rpush(f"gate:{i}", "open")
    # Then the parked runs finish under version 1 ...
    for run_id in ids:
        state = v1.wait(run_id, timeout=60)
        assert state.status is Status.COMPLETED
        assert [c.name for c in state.checkpoints] == ["debit", "credit", "notify"]
        assert "saga.resumed" in event_types(v1, run_id)
    resumed = [e for e in v1.events(ids[0]) if e["type"] == "saga.resumed"]
    assert resumed[-1]["reason"] == "definition available"
    # ... and new runs use version 2, the highest declared
    new = [both.start({"from": "alice", "to": "bob", "amount": 10}) for _ in range(2)]
    for run_id in new:
        state = both.wait(run_id, timeout=60)
        assert state.definition_version == 2
        assert [c.name for c in state.checkpoints] == ["debit", "credit", "notify", "audit"]
    assert_balanced(ledger_path, both, ids + new)
    # an operator sees how many runs each version still has: version 1 has none left to drain
    rows = {r["version"]: r for r in json.loads(deployment.cli("stats", "--json").stdout) if r["saga"] == "transfer"}
    assert (rows[1]["completed"], rows[1]["unfinished"], rows[2]["completed"]) == (4, 0, 2)
    by_version = json.loads(deployment.cli("list", "--version", "1", "--json").stdout)
    assert {r["id"] for r in by_version} == set(ids)


def test_an_operator_compensates_a_parked_run_with_the_compensations_of_the_new_version(
    deployment: Deployment, mine: Settings, ledger_path: str
) -> None:
    v1 = client(mine, 1)
    # Given a version-1 run that debited alice and was parked by a worker with version 2 only
    deployment.start("v1only", "1")
    run_id = v1.start({"from": "alice", "to": "bob", "amount": 10, "gate": "never-opened"})
    wait_for(
        lambda: event_types(v1, run_id)[-1] == "step.started" and v1.get(run_id).current_step == 1,
        timeout=30,
        what="the credit to start",
    )
    deployment.stop("v1only", signal.SIGKILL)
    deployment.start("v2only", "2")
    wait_for(lambda: run_id in parked(v1), timeout=30, what="the run to park")
    assert transfer.balances(ledger_path)["alice"] == 990
    # resuming it is refused, saying why, while no worker has version 1
    refused = deployment.cli("resume", run_id, versions="2")
    assert refused.returncode == 6 and "stays parked" in refused.stderr and len(refused.stderr.splitlines()) == 1
    # When an operator compensates it, with only version 2 loaded
    out = deployment.cli("compensate", run_id, "--reason", "v1 removed", "--json", versions="2")
    assert out.returncode == 0, out.stderr
    # Then version 2's refund undoes the debit (by step name), once, and the run ends compensated
    state = v1.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED
    assert transfer.balances(ledger_path) == START
    assert [amount for _, _, amount in transfer.movements(ledger_path, run_id)] == [-10, 10]
    [requested] = [e for e in v1.events(run_id) if e["type"] == "saga.compensation_requested"]
    assert (requested["reason"], requested["from_status"]) == ("v1 removed", "running")
    assert run_id not in parked(v1)


def test_an_operator_compensates_a_failed_run_once_the_fault_is_fixed(
    deployment: Deployment, mine: Settings, ledger_path: str, server: RedisServer
) -> None:
    faults = redis.Redis.from_url(server.url)
    saga = client(mine, 1, 2)
    deployment.start("both", "1,2")
    # Given a run whose credit is refused and whose refund then fails: the run is failed
    faults.set("refunds-broken", "1")
    run_id = saga.start({"from": "alice", "to": "bob", "amount": 10, "refuse_credit": True, "broken": "refunds-broken"})
    state = saga.wait(run_id, timeout=60)
    assert state.status is Status.FAILED and transfer.balances(ledger_path)["alice"] == 990
    # When the bank is fixed and an operator compensates the run
    faults.delete("refunds-broken")
    out = deployment.cli("compensate", run_id)
    assert out.returncode == 0, out.stderr
    assert "step=]" not in out.stderr and "step= " not in out.stderr  # the run's log line names no empty step
    # Then the debit is refunded and the run ends compensated
    assert saga.wait(run_id, timeout=30).status is Status.COMPENSATED
    assert transfer.balances(ledger_path) == START
    # and a finished run cannot be compensated again
    again = deployment.cli("compensate", run_id)
    assert again.returncode == 6 and "only an unfinished, parked or failed run" in again.stderr


def test_a_run_of_a_saga_no_worker_knows_is_parked_by_the_watchdog_not_lost(
    deployment: Deployment, mine: Settings
) -> None:
    # Given a worker that does not know saga "ghost", and a run of it (the worker drops the
    # message as an unknown task)
    deployment.start("v2only", "2")
    ghost = Saga("ghost", app=create_app("ghost", mine), registry=Registry(mine))

    @ghost.step
    def haunt(payload: dict[str, Any], ctx: Any) -> None:
        return None

    run_id = ghost.start({"n": 1})
    # Then, once the dispatch timeout has passed, the watchdog parks it, saying why
    events = wait_for(
        lambda: [e for e in ghost.events(run_id) if e["type"] == "saga.parked"], timeout=30, what="the run to be parked"
    )
    assert "no worker here defines saga 'ghost'" in events[0]["reason"]
    assert ghost.get(run_id).status is Status.PENDING


def test_compensate_refuses_a_run_whose_compensations_no_loaded_definition_has(
    deployment: Deployment, mine: Settings
) -> None:
    saga = client(mine, 1)
    deployment.start("v1only", "1")
    run_id = saga.start({"from": "alice", "to": "bob", "amount": 10, "gate": "never"})
    wait_for(lambda: saga.get(run_id).current_step == 1, timeout=30, what="the debit to commit")
    deployment.stop("v1only", signal.SIGKILL)
    # an operator process that loads no definition of the saga
    out = deployment.cli("compensate", run_id, versions="")
    assert out.returncode == 6 and len(out.stderr.splitlines()) == 1
    assert "no loaded definition of saga 'transfer' has a compensation for step(s) debit" in out.stderr
    assert saga.get(run_id).status is Status.RUNNING  # refused: nothing written


def test_resume_of_a_parked_run_works_once_its_definition_is_back(
    deployment: Deployment, mine: Settings, ledger_path: str
) -> None:
    v1 = client(mine, 1)
    # Given a version-1 run parked by a worker that has only version 2
    deployment.start("v2only", "2")
    run_id = v1.start({"from": "alice", "to": "bob", "amount": 10})
    wait_for(lambda: run_id in parked(v1), timeout=30, what="the run to park")
    deployment.stop("v2only")
    # When an operator resumes it with version 1 loaded, and a worker with version 1 runs
    out = deployment.cli("resume", run_id, "--json", versions="1")
    assert out.returncode == 0, out.stderr
    assert run_id not in parked(v1)
    deployment.start("v1only", "1")
    # Then it finishes under version 1
    state = v1.wait(run_id, timeout=60)
    assert state.status is Status.COMPLETED and state.definition_version == 1
    assert [e["reason"] for e in v1.events(run_id) if e["type"] == "saga.resumed"] == ["operator"]
    assert transfer.balances(ledger_path) == {"alice": 990, "bob": 10}
