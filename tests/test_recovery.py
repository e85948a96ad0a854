"""Recovery: leases, fencing, resume from the last checkpoint, checkpoint verification, drift.

The in-process worker runs no watchdog of its own; these tests drive one pass at a time with
``Watchdog.scan()``, so each resume is the test's doing and can be asserted exactly.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from saga import RedisStore, Saga, Settings, Status, StepContext, create_app, dead_letters, worker
from saga.core import Shape, Transition, decide
from saga.engine import Watchdog
from saga.registry import Registry, default_registry
from saga.store import Client
from saga.testing import wait_for
from tests.sagas import app, ledger, trip

pytestmark = pytest.mark.usefixtures("worker")

# one watchdog, as in one worker: a second one would wait for the first one's election lock
watchdog = worker.watchdog(default_registry())


def create(t: Transition, shape: Shape | None = None) -> None:
    """Write a run as ``start()`` would, without sending its first step (a crash in between)."""
    assert trip.store.create(shape or trip.shape, t, None, check_at=time.time() + 30) == "created"


def only(payload: dict[str, Any], ctx: StepContext) -> None:
    """A one-step saga's step."""
    return None


@pytest.fixture(autouse=True)
def open_election(redis_client: Client) -> None:
    """Workers of other test modules (subprocesses with real watchdogs) may have held the lock."""
    redis_client.delete(trip.store.keyspace.global_keys.watchdog)


def resumes(run_id: str) -> list[dict[str, object]]:
    return [e for e in trip.events(run_id) if e["type"] == "saga.resumed"]


def scan_until_resumed(run_id: str) -> None:
    """Make the run due now and let one watchdog pass resume it."""
    trip.store.indexes.schedule(run_id, 0)
    watchdog.scan()


def test_a_run_whose_next_step_was_never_published_is_resumed() -> None:
    # Given a run written to the store an hour ago but never dispatched (a crash between commit and
    # publish), so well past SAGA_DISPATCH_TIMEOUT
    t = decide.decide_start(str(uuid.uuid4()), "trip", {"lost": True}, at="2026-01-01T00:00:00.000000Z")
    create(t)
    # When the watchdog finds it past its deadline
    scan_until_resumed(t.state.id)
    # Then it resumes from version 1 and completes
    state = trip.wait(t.state.id, timeout=30)
    assert state.status is Status.COMPLETED
    [resumed] = [e for e in trip.events(t.state.id) if e["type"] == "saga.resumed"]
    assert resumed["reason"] == "message not begun within SAGA_DISPATCH_TIMEOUT: lost or still queued"
    assert resumed["from_version"] == 1
    assert trip.rebuild(t.state.id) == state


def test_a_step_sent_moments_ago_is_not_resent_while_it_may_still_be_queued() -> None:
    t = decide.decide_start(str(uuid.uuid4()), "trip", {"queued": True})
    create(t)
    trip.store.indexes.schedule(t.state.id, 0)
    watchdog.scan()
    assert not resumes(t.state.id)
    score = trip.store.indexes.deadline(t.state.id)
    assert score is not None and score > time.time() + 10  # looked at again later
    trip.store.indexes.forget_active(t.state.id)


def test_a_step_whose_lease_expired_is_resumed_and_the_late_attempt_is_discarded(redis_client: Client) -> None:
    # Given a step that hangs (a paused or partitioned worker) ...
    gate = f"gate:{uuid.uuid4()}"
    run_id = trip.start({"block": {"hotel": gate}})
    wait_for(lambda: "forward:hotel" in ledger(run_id), what="hotel to start")
    # ... and loses its lease
    redis_client.delete(trip.store.keyspace.keys(run_id).lease)
    # When the watchdog resumes the run, a second attempt of hotel starts
    scan_until_resumed(run_id)
    wait_for(lambda: ledger(run_id).count("forward:hotel") == 2, what="the second attempt")
    # and both attempts are let go (BLPOP wakes the first waiter first)
    redis_client.rpush(gate, "go", "go")
    state = trip.wait(run_id, timeout=30)
    wait_for(lambda: redis_client.llen(gate) == 0, what="both attempts to finish")
    # Then exactly one result of hotel was committed, the run completed once, and the late
    # attempt's commit was refused
    assert state.status is Status.COMPLETED
    assert trip.get(run_id) == state
    assert [e["name"] for e in trip.events(run_id) if e["type"] == "step.succeeded"] == [
        "flight",
        "hotel",
        "car",
        "pay",
    ]
    reasons = [e["reason"] for e in trip.events(run_id) if e["type"] == "saga.resumed"]
    assert reasons == ["lease expired: the worker running attempt 1 stopped renewing its lease"]


def test_a_slow_step_keeps_its_lease_through_the_heartbeat(redis_client: Client) -> None:
    # the suite's lease is 2 s; this step outlives several leases
    gate = f"gate:{uuid.uuid4()}"
    run_id = trip.start({"block": {"car": gate}})
    wait_for(lambda: "forward:car" in ledger(run_id), what="car to start")
    token = trip.store.reads.lease(run_id)
    wait_for(lambda: redis_client.pttl(trip.store.keyspace.keys(run_id).lease) > 1900, timeout=5, what="a renewal")
    ttl_seen = redis_client.pttl(trip.store.keyspace.keys(run_id).lease)
    # a watchdog pass past the deadline leaves it alone: the lease is live
    trip.store.indexes.schedule(run_id, 0)
    watchdog.scan()
    assert not resumes(run_id)
    assert trip.store.reads.lease(run_id) == token and ttl_seen > 0
    redis_client.rpush(gate, "go")
    assert trip.wait(run_id, timeout=30).status is Status.COMPLETED
    assert not any(e["type"] == "saga.resumed" for e in trip.events(run_id))


def test_a_checkpoint_that_does_not_verify_is_never_resumed(redis_client: Client) -> None:
    # Given a run stalled after two committed steps ...
    gate = f"gate:{uuid.uuid4()}"
    run_id = trip.start({"block": {"car": gate}})
    wait_for(lambda: "forward:car" in ledger(run_id), what="car to start")
    keys = trip.store.keyspace.keys(run_id)
    redis_client.delete(keys.lease)
    # ... whose stored payload was altered after its checkpoint
    snap = json.loads(cast(str, redis_client.get(keys.snapshot)))
    snap["payload"]["hotel"] = "tampered"
    redis_client.set(keys.snapshot, json.dumps(snap))
    # When the watchdog looks at it
    trip.store.indexes.schedule(run_id, 0)
    watchdog.scan()
    # Then it fails with a clear error and a dead letter, and nothing is dispatched
    state = trip.get(run_id)
    assert state.status is Status.FAILED
    assert state.error is not None and state.error.type == "CheckpointCorrupted"
    assert "hash" in state.error.message
    assert [d["error_type"] for d in dead_letters() if d["run_id"] == run_id] == ["CheckpointCorrupted"]
    redis_client.rpush(gate, "go")  # the hung attempt's result is refused (the run moved on)
    wait_for(lambda: redis_client.llen(gate) == 0, what="the hung attempt to finish")
    assert "forward:pay" not in ledger(run_id)


def test_a_worker_with_a_different_definition_parks_the_run_and_never_fails_it() -> None:
    # Given a run recorded under another definition of "trip" version 1 (changed without a new version)
    t = decide.decide_start(str(uuid.uuid4()), "trip", {"n": 1})
    create(t, shape=Shape(("flight", "other"), (True, True)))
    parks_before = REGISTRY.get_sample_value("saga_runs_parked_total", {"saga": "trip"}) or 0
    # When this worker gets its first step
    trip.steps[0].task.apply_async(args=(t.state.id,))
    # Then it parks the run, saying why (and counts it), instead of running another sequence or failing it
    events = wait_for(lambda: [e for e in trip.events(t.state.id) if e["type"] == "saga.parked"], what="a park")
    assert "a changed definition needs a new version number" in events[0]["reason"]
    state = trip.get(t.state.id)
    assert (state.status, state.version) == (Status.PENDING, 1)
    assert ledger(t.state.id) == []
    assert not [d for d in dead_letters() if d["run_id"] == t.state.id]
    assert t.state.id in [p.run_id for p in trip.store.indexes.parked()]
    assert REGISTRY.get_sample_value("saga_runs_parked_total", {"saga": "trip"}) == parks_before + 1
    # and a watchdog with this same (other) definition leaves it parked
    watchdog.scan()
    assert trip.get(t.state.id).version == 1 and not resumes(t.state.id)


def test_an_unreachable_broker_at_start_keeps_the_run_for_the_watchdog(
    caplog: pytest.LogCaptureFixture, settings: Settings
) -> None:
    unreachable = create_app("nobroker", broker_url="redis://127.0.0.1:1/0", broker_connection_max_retries=0)
    nobroker = Saga("nobroker", app=unreachable, registry=Registry(settings))
    nobroker.step(name="only")(only)
    run_id = nobroker.start({"n": 1})
    state = nobroker.get(run_id)
    assert (state.status, state.version) == (Status.PENDING, 1)
    assert nobroker.store.indexes.deadline(run_id) is not None
    assert any("watchdog will send it" in rec.getMessage() for rec in caplog.records)


def test_one_unreachable_store_does_not_stop_the_watchdog_watching_the_others(settings: Settings) -> None:
    elsewhere = Saga(
        "elsewhere", app=app, store=RedisStore("redis://127.0.0.1:1/0", retries=0), registry=Registry(settings)
    )
    elsewhere.step(name="only")(only)
    both = Watchdog(lambda: [elsewhere.runtime(), *default_registry().runtimes()], settings)
    t = decide.decide_start(str(uuid.uuid4()), "trip", {"lost": True}, at="2026-01-01T00:00:00.000000Z")
    create(t)
    trip.store.indexes.schedule(t.state.id, 0)
    assert both.scan() == 1
    assert trip.wait(t.state.id, timeout=30).status is Status.COMPLETED


def test_several_watchdogs_elect_one_scanner_and_another_takes_over_when_it_dies(redis_client: Client) -> None:
    # Given two workers' watchdogs and a stalled run
    first, second = worker.watchdog(default_registry()), worker.watchdog(default_registry())
    t = decide.decide_start(str(uuid.uuid4()), "trip", {"lost": True}, at="2026-01-01T00:00:00.000000Z")
    create(t)
    trip.store.indexes.schedule(t.state.id, 0)
    # When both scan, only the elected one acts
    first.scan()
    assert len(resumes(t.state.id)) == 1
    trip.store.indexes.schedule(t.state.id, 0)
    assert second.scan() == 0
    assert redis_client.get(trip.store.keyspace.global_keys.watchdog) == first.owner
    assert trip.wait(t.state.id, timeout=30).status is Status.COMPLETED
    assert [e["type"] for e in trip.events(t.state.id)].count("saga.resumed") == 1
    # Then, once the elected one is gone (its lock lapses), the other one scans
    redis_client.delete(trip.store.keyspace.global_keys.watchdog)
    second.scan()
    assert redis_client.get(trip.store.keyspace.global_keys.watchdog) == second.owner
    redis_client.delete(trip.store.keyspace.global_keys.watchdog)  # leave the election open for the next test
