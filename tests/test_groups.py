"""Parallel groups, deadlines, step timeouts and cancelling a hung step, on real prefork worker
processes and a private Redis: the trip ``quote -> [flight | hotel | car] -> pay``
(``tests/trips.py``), with an effects ledger that shows what really happened."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga import Saga, SagaState, Settings, Status, dead_letters
from saga.control import runs as control
from saga.registry import default_registry
from saga.testing import RedisServer, configured, start_worker_process, stop_process_group, wait_for, worker_env
from tests import trips

ROOT = Path(__file__).resolve().parents[1]
LEASE = 1.5


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: its workers' queues are theirs alone (the suite's in-process
    worker, consuming the shared Redis, knows none of these sagas)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def trip_settings(settings: Settings, private_redis: RedisServer) -> Iterator[Settings]:
    ours = settings.replace(
        redis_url=private_redis.url, lease_seconds=LEASE, watchdog_interval=0.3, dispatch_timeout=3.0
    )
    trips.use_ledger(private_redis.url)
    yield ours


class Workers:
    """Prefork worker processes of ``tests.trips`` (4 children: a group's 3 members at once)."""

    def __init__(self, settings: Settings) -> None:
        self.env = worker_env(settings, PYTHONPATH=str(ROOT))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        proc = start_worker_process(
            "tests.trips", self.env, name=f"trips-{uuid.uuid4().hex[:6]}", concurrency=4, cwd=ROOT
        )
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            stop_process_group(proc, signal.SIGKILL)
        self.procs.clear()


@pytest.fixture(scope="module")
def workers(trip_settings: Settings) -> Iterator[Workers]:
    w = Workers(trip_settings)
    w.start()
    try:
        yield w
    finally:
        w.kill_all()


@pytest.fixture
def trip(trip_settings: Settings, workers: Workers) -> Iterator[Saga]:
    with configured(default_registry(), trip_settings, trips.app):
        yield trips.trip


def gate() -> str:
    return f"gate:{uuid.uuid4().hex}"


def release(key: str) -> None:
    trips.client().rpush(key, "go")


def events_of(saga: Saga, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in saga.events(run_id) if e["type"] == kind]


def letters_of(run_id: str) -> list[dict[str, Any]]:
    return [d for d in dead_letters() if d["run_id"] == run_id]


def assert_consistent(saga: Saga, run_id: str) -> SagaState:
    state = saga.get(run_id)
    assert saga.rebuild(run_id) == state
    assert [s.version for s in saga.history(run_id)] == list(range(1, state.version + 1))
    return state


def test_a_group_runs_its_members_at_once_and_the_run_goes_on_when_all_committed(trip: Saga) -> None:
    # Given flight held in flight after its effect
    held = gate()
    run_id = trip.start({"gate": {"flight": held}})
    # Then hotel and car act while flight has not returned: the members run concurrently
    wait_for(lambda: {"forward:flight", "forward:hotel", "forward:car"} <= set(trips.effects(run_id)), 30)
    assert trip.get(run_id).current_step == 1, "pay must wait for the whole group"
    assert "forward:pay" not in trips.effects(run_id)
    release(held)
    state = trip.wait(run_id, timeout=30)
    assert state.status is Status.COMPLETED
    # Outputs merged; pay ran once, after every member committed
    assert {"flight_ref", "hotel_ref", "car_ref", "pay_ref"} <= set(state.payload)
    assert trips.effects(run_id)[-1] == "forward:pay"
    assert sorted(c.name for c in state.checkpoints) == ["car", "flight", "hotel", "pay", "quote"]
    assert assert_consistent(trip, run_id) == state


def test_a_member_gives_up_while_a_sibling_is_in_flight_whose_commit_is_then_compensated(trip: Saga) -> None:
    # Given car refusing for good while flight is held in flight
    held = gate()
    run_id = trip.start({"fail_at": "car", "gate": {"flight": held}})
    wait_for(lambda: trip.get(run_id).status is Status.COMPENSATING, 30, "the group to start unwinding")
    wait_for(lambda: "forward:flight" in trips.effects(run_id), 30)
    assert "compensation:flight" not in trips.effects(run_id), "flight is in flight: nothing to undo yet"
    # When flight returns
    release(held)
    state = trip.wait(run_id, timeout=30)
    # Then its commit was recorded and compensated, with every other committed step
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.name == "car"
    committed = {c.name for c in state.checkpoints}
    assert {"quote", "flight"} <= committed and "car" not in committed
    done = trips.effects(run_id)
    undone = [e.split(":")[1] for e in done if e.startswith("compensation:")]
    assert sorted(undone) == sorted(committed)
    assert undone[-1] == "quote", "the group is undone before the steps before it"
    assert "forward:pay" not in done
    assert [d["step"] for d in letters_of(run_id)] == ["car"]
    assert_consistent(trip, run_id)


def test_a_killed_worker_resumes_exactly_the_members_that_had_not_committed(trip: Saga, workers: Workers) -> None:
    # Given flight and hotel held in flight (attempt 1 only) and car committed
    run_id = trip.start({"gate": {"flight": "g1:{attempt}", "hotel": "g2:{attempt}"}})
    wait_for(lambda: {"forward:flight", "forward:hotel"} <= set(trips.effects(run_id)), 30)
    wait_for(lambda: "car" in {c.name for c in trip.get(run_id).checkpoints}, 30)
    # When the worker is SIGKILLed and another one starts
    workers.kill_all()
    for attempt in range(2, 6):
        release(f"g1:{attempt}")
        release(f"g2:{attempt}")
    workers.start()
    state = trip.wait(run_id, timeout=60)
    # Then the run completes, resuming flight and hotel only, each effect applied once
    assert state.status is Status.COMPLETED
    resumed = {e["name"] for e in events_of(trip, run_id, "saga.resumed")}
    assert resumed == {"flight", "hotel"}
    assert trips.raw(run_id)["forward:car"] == 1
    done = trips.effects(run_id)
    assert sorted(done) == sorted(f"forward:{s}" for s in ("quote", "flight", "hotel", "car", "pay"))
    assert_consistent(trip, run_id)


def test_members_writing_the_same_key_fail_naming_both(trip: Saga) -> None:
    run_id = trip.start({"overlap": True})
    state = trip.wait(run_id, timeout=30)
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.type == "OutputConflict"
    assert "flight" in state.error.message and "hotel" in state.error.message
    committed = {c.name for c in state.checkpoints}
    undone = {e.split(":")[1] for e in trips.effects(run_id) if e.startswith("compensation:")}
    assert undone == {n for n in committed if n != "pay"}
    assert_consistent(trip, run_id)


def assert_balanced(run_id: str) -> list[str]:
    """Every forward effect of an undoable step (all but pay) has its compensation, after it,
    and nothing that never acted is undone; returns the ledger."""
    done = trips.effects(run_id)
    acted = [e.removeprefix("forward:") for e in done if e.startswith("forward:")]
    undone = [e.removeprefix("compensation:") for e in done if e.startswith("compensation:")]
    assert sorted(undone) == sorted(n for n in acted if n != "pay"), f"ledger not balanced: {done}"
    assert all(done.index(f"forward:{n}") < done.index(f"compensation:{n}") for n in undone), done
    return done


def test_a_deadline_compensates_a_member_held_in_flight_with_the_committed_ones(trip: Saga) -> None:
    # Given hotel held in flight after its effect, flight and car committed
    held = gate()
    run_id = trip.start({"gate": {"hotel": held}}, deadline=3)
    # When the deadline passes
    state = assert_expired(trip, run_id)
    # Then hotel (began, never committed: it may have acted) is compensated with flight and car
    assert state.error is not None and state.error.name == "hotel", "the error names the member that was running"
    assert {c.name for c in state.checkpoints} == {"quote", "flight", "car"}
    done = assert_balanced(run_id)
    assert "compensation:hotel" in done and done[-1] == "compensation:quote"
    assert len(events_of(trip, run_id, "group.compensated")) == 1
    assert_consistent(trip, run_id)
    # and hotel's attempt, fenced, returns now: its commit is refused
    release(held)
    wait_for(lambda: trips.raw(run_id).get("forward:hotel") == 1, 10)
    time.sleep(LEASE)
    assert trip.get(run_id) == state


def test_cancelling_a_group_compensates_a_member_held_in_flight(trip: Saga) -> None:
    # Given hotel held in flight after its effect, flight and car committed
    held = gate()
    run_id = trip.start({"gate": {"hotel": held}})
    wait_for(lambda: {"flight", "car"} <= {c.name for c in trip.get(run_id).checkpoints}, 30)
    wait_for(lambda: "forward:hotel" in trips.effects(run_id), 30)
    # When an operator cancels the run (hotel's lease is renewed no more, and lapses)
    control.cancel(run_id, reason="customer left")
    state = trip.wait(run_id, timeout=30)
    # Then hotel is compensated with the committed members, then quote
    assert state.status is Status.COMPENSATED
    assert [e["reason"] for e in events_of(trip, run_id, "saga.cancelled")] == ["customer left"]
    done = assert_balanced(run_id)
    assert "compensation:hotel" in done and done[-1] == "compensation:quote"
    assert_consistent(trip, run_id)
    release(held)
    time.sleep(LEASE)  # the hung body returns now; its commit is refused
    assert trip.get(run_id) == state


def test_a_member_gives_up_while_a_sibling_is_held_and_the_workers_are_killed(trip: Saga, workers: Workers) -> None:
    # Given car refusing for good while hotel is held in flight after its effect (attempt 1)
    run_id = trip.start({"fail_at": "car", "gate": {"hotel": "hold:" + uuid.uuid4().hex}})
    wait_for(lambda: trip.get(run_id).status is Status.COMPENSATING, 30, "the group to start unwinding")
    wait_for(lambda: "flight" in {c.name for c in trip.get(run_id).checkpoints}, 30)
    wait_for(lambda: "forward:hotel" in trips.effects(run_id), 30)
    # When every worker is SIGKILLed (hotel's attempt dies uncommitted) and another one starts
    workers.kill_all()
    workers.start()
    state = trip.wait(run_id, timeout=60)
    # Then hotel, which may have acted, is found at the group's unwind and compensated too
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.name == "car"
    assert {c.name for c in state.checkpoints} == {"quote", "flight"}
    done = assert_balanced(run_id)
    assert "compensation:hotel" in done and done[-1] == "compensation:quote"
    added = [e["began"] for e in events_of(trip, run_id, "saga.resumed") if "began" in e]
    assert added == [[2]], "hotel is added to the unwind once"
    assert [d["step"] for d in letters_of(run_id)] == ["car"]
    assert_consistent(trip, run_id)


# --- deadlines ------------------------------------------------------------------------------


def assert_expired(saga: Saga, run_id: str) -> SagaState:
    state = saga.wait(run_id, timeout=60)
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.type == "DeadlineExceeded"
    assert len(events_of(saga, run_id, "saga.deadline_exceeded")) == 1
    assert letters_of(run_id) == []
    return state


def test_a_deadline_during_a_step_fences_it_and_compensates(trip_settings: Settings, workers: Workers) -> None:
    with configured(default_registry(), trip_settings, trips.app):
        held = gate()
        run_id = trips.timed.start({"gate": {"slow": held}}, deadline=3)
        wait_for(lambda: "forward:slow" in trips.effects(run_id), 30)
        state = assert_expired(trips.timed, run_id)
        assert [c.name for c in state.checkpoints] == ["reserve"]
        assert "compensation:reserve" in trips.effects(run_id)
        # the attempt that was running when the deadline passed returns now: it cannot commit
        release(held)
        wait_for(lambda: trips.raw(run_id).get("forward:slow") == 1, 10)
        time.sleep(LEASE)  # give the released body time to try its (refused) commit
        assert trips.timed.get(run_id) == state
        assert not [e for e in events_of(trips.timed, run_id, "step.succeeded") if e["name"] == "slow"]


def test_a_deadline_during_a_retry_backoff_compensates(trip_settings: Settings, workers: Workers) -> None:
    with configured(default_registry(), trip_settings, trips.app):
        run_id = trips.timed.start({"fail_times": {"slow": 100}}, deadline=3)
        wait_for(lambda: events_of(trips.timed, run_id, "step.retrying"), 30, "slow to fail and wait")
        state = assert_expired(trips.timed, run_id)
        assert state.error is not None and state.error.name == "slow"
        assert trips.effects(run_id) == ["forward:reserve", "compensation:reserve"]


def test_a_deadline_passing_while_no_worker_runs_is_enforced(trip_settings: Settings, workers: Workers) -> None:
    workers.kill_all()
    try:
        with configured(default_registry(), trip_settings, trips.app):
            run_id = trips.timed.start({}, deadline=1)
            until = trips.timed.get(run_id).deadline_at
            assert until
            wait_for(lambda: time.time() > time_of(until) + 0.1, 10, "the deadline to pass")
            workers.start()
            assert_expired(trips.timed, run_id)
            assert trips.effects(run_id) == [], "nothing ran forward after the deadline"
    finally:
        if not workers.procs:
            workers.start()


def time_of(iso: str) -> float:
    from saga.core import parse_iso

    return parse_iso(iso)


def test_a_saga_deadline_applies_to_every_run_and_start_overrides_it(trip_settings: Settings) -> None:
    with configured(default_registry(), trip_settings, trips.app):
        default_run = trips.timed.start({"gate": {"reserve": gate()}})
        short_run = trips.timed.start({"gate": {"reserve": gate()}}, deadline=30)
        started = time_of(trips.timed.get(short_run).created_at)
        assert time_of(trips.timed.get(default_run).deadline_at) - started == pytest.approx(600, abs=5)
        assert time_of(trips.timed.get(short_run).deadline_at) - started == pytest.approx(30, abs=0.01)
        assert trips.trip.get(trips.trip.start({})).deadline_at == ""
        for run_id in (default_run, short_run):
            control.cancel(run_id)


# --- step timeouts and cancelling a hung step ---------------------------------------------


def test_a_step_past_its_timeout_is_retried_then_gives_up_and_never_commits(
    trip_settings: Settings, workers: Workers
) -> None:
    with configured(default_registry(), trip_settings, trips.app):
        run_id = trips.limited.start({"hang": {"stuck": 30}})
        state = trips.limited.wait(run_id, timeout=60)
        assert state.status is Status.COMPENSATED
        assert state.error is not None and state.error.name == "stuck"
        assert state.error.type == "SoftTimeLimitExceeded" and state.error.attempts == 2
        assert len(events_of(trips.limited, run_id, "step.retrying")) == 1
        assert trips.raw(run_id)["forward:stuck"] == 2
        assert trips.effects(run_id) == ["forward:hold", "compensation:hold"], "a timed-out attempt never acted"
        assert [d["step"] for d in letters_of(run_id)] == ["stuck"]


def test_cancelling_a_run_whose_step_hangs_takes_effect_without_the_step(
    trip_settings: Settings, workers: Workers
) -> None:
    with configured(default_registry(), trip_settings, trips.app):
        held = gate()
        run_id = trips.timed.start({"gate": {"slow": held}})
        wait_for(lambda: "forward:slow" in trips.effects(run_id), 30)
        control.cancel(run_id, reason="customer left")
        state = trips.timed.wait(run_id, timeout=30)  # the step still hangs: its gate stays shut
        assert state.status is Status.COMPENSATED
        assert [e["reason"] for e in events_of(trips.timed, run_id, "saga.cancelled")] == ["customer left"]
        assert "compensation:reserve" in trips.effects(run_id)
        release(held)
        time.sleep(LEASE)  # the hung body returns now; its commit is refused
        assert trips.timed.get(run_id) == state
