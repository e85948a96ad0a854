"""The saga engine end to end: a real Redis, a real in-process Celery worker."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from saga import (
    InvalidPayload,
    KeyConflict,
    PermanentError,
    Rejected,
    RunNotFound,
    Saga,
    SagaDefinitionError,
    SagaState,
    SagaTimeout,
    Settings,
    Status,
    StepContext,
    dead_letters,
    get_settings,
    payload_hash,
)
from saga.core import canonical_json
from saga.registry import Registry, default_registry
from saga.store import Client
from saga.testing import wait_for
from tests.sagas import app, asyncs, effects, gaps, ledger, payments, single, trip

pytestmark = pytest.mark.usefixtures("worker")


def finished(saga: Saga, run_id: str) -> SagaState:
    state = saga.wait(run_id, timeout=30)
    # every run, whatever its fate, must be rebuildable from its events alone
    assert saga.rebuild(run_id) == state
    history = saga.history(run_id)
    assert [s.version for s in history] == list(range(1, state.version + 1))
    assert history[-1] == state
    return state


def types(saga: Saga, run_id: str) -> list[str]:
    return [e["type"] for e in saga.events(run_id)]


def test_happy_path_runs_every_step_once_and_checkpoints_each(redis_client: Client) -> None:
    run_id = trip.start({"trip": 1})
    state = finished(trip, run_id)

    assert state.status is Status.COMPLETED
    assert ledger(run_id) == ["forward:flight", "forward:hotel", "forward:car", "forward:pay"]
    assert dict(state.payload) == {"trip": 1, "flight": 1, "hotel": 1, "car": 1, "pay": 1}
    assert [(c.step, c.name) for c in state.checkpoints] == [(0, "flight"), (1, "hotel"), (2, "car"), (3, "pay")]
    assert state.current_step == 4 and state.error is None
    assert types(trip, run_id) == [
        "saga.started",
        "step.started",
        "step.succeeded",
        "step.started",
        "step.succeeded",
        "step.started",
        "step.succeeded",
        "step.started",
        "step.succeeded",
        "saga.completed",
    ]


def test_every_checkpoint_hash_is_the_sha256_of_the_canonical_payload_after_its_step() -> None:
    run_id = trip.start({"trip": 2, "unicode": "ünïcödé", "nested": {"z": 1, "a": [1, 2]}})
    final = finished(trip, run_id)
    checked = 0
    for snap in trip.history(run_id):
        # the snapshot that committed a step is the first one holding its checkpoint
        if snap.checkpoints and len(snap.checkpoints) > checked:
            cp = snap.checkpoints[-1]
            text = json.dumps(dict(snap.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            assert cp.hash == hashlib.sha256(text.encode("utf-8")).hexdigest() == payload_hash(snap.payload)
            assert canonical_json(snap.payload) == text
            checked = len(snap.checkpoints)
    assert checked == len(final.checkpoints) == 4


def test_a_rejection_compensates_at_once_and_leaves_no_dead_letter() -> None:
    # Given a step that rejects the request as a normal business outcome
    run_id = trip.start({"reject_at": "car"})
    state = finished(trip, run_id)
    # Then the committed steps are undone, newest first, without retries
    assert state.status is Status.COMPENSATED
    assert ledger(run_id) == [
        "forward:flight",
        "forward:hotel",
        "forward:car",
        "compensation:hotel",
        "compensation:flight",
    ]
    # and the run says why, while the dead-letter queue keeps only what needs an operator
    assert state.error is not None
    assert (state.error.name, state.error.type, state.error.message) == ("car", "Rejected", "insufficient funds")
    assert [d for d in dead_letters() if d["run_id"] == run_id] == []
    assert types(trip, run_id)[-7:] == [
        "step.failed",
        "saga.rejected",
        "compensation.started",
        "compensation.succeeded",
        "compensation.started",
        "compensation.succeeded",
        "saga.compensated",
    ]
    assert trip.rebuild(run_id) == state
    assert issubclass(Rejected, PermanentError)


def test_a_failure_at_step_k_compensates_k_minus_1_down_to_1_in_order() -> None:
    run_id = trip.start({"fail_at": "car"})
    state = finished(trip, run_id)

    assert state.status is Status.COMPENSATED
    assert ledger(run_id) == [
        "forward:flight",
        "forward:hotel",
        "forward:car",
        "compensation:hotel",
        "compensation:flight",
    ]
    assert state.error is not None
    error = state.error
    assert (error.step, error.name, error.type, error.attempts) == (2, "car", "PermanentError", 1)
    [entry] = [d for d in dead_letters() if d["run_id"] == run_id]
    assert {k: entry[k] for k in ("saga", "step", "kind", "error_type", "attempts")} == {
        "saga": "trip",
        "step": "car",
        "kind": "forward",
        "error_type": "PermanentError",
        "attempts": 1,
    }
    assert entry["error_message"] == "car refused" and entry["id"] and entry["at"]
    assert types(trip, run_id)[-7:] == [
        "step.failed",
        "saga.dead_lettered",
        "compensation.started",
        "compensation.succeeded",
        "compensation.started",
        "compensation.succeeded",
        "saga.compensated",
    ]


def test_steps_without_a_compensation_are_passed_over_in_the_unwind() -> None:
    run_id = gaps.start({"fail_at": "d"})
    state = finished(gaps, run_id)
    assert state.status is Status.COMPENSATED
    assert ledger(run_id)[4:] == ["compensation:c", "compensation:a"]


def test_retries_then_success_records_each_retry() -> None:
    run_id = trip.start({"flaky": {"hotel": 2}})
    state = finished(trip, run_id)

    assert state.status is Status.COMPLETED
    assert ledger(run_id).count("forward:hotel") == 3
    retries = [e for e in trip.events(run_id) if e["type"] == "step.retrying"]
    assert [(e["name"], e["attempt"], e["error_type"]) for e in retries] == [
        ("hotel", 1, "ConnectionError"),
        ("hotel", 2, "ConnectionError"),
    ]
    assert all(0 <= e["delay"] <= 0.05 for e in retries)
    assert state.payload["hotel"] == 3  # the step saw its attempt number
    assert len(effects(run_id)) == 4  # the effect of each step applied once, despite the retries


def test_retries_exhausted_dead_letter_then_compensate() -> None:
    run_id = trip.start({"flaky": {"car": 99}})
    state = finished(trip, run_id)

    assert state.status is Status.COMPENSATED
    assert ledger(run_id).count("forward:car") == 3  # 1 + max_retries (2)
    assert state.error is not None and state.error.attempts == 3 and state.error.type == "ConnectionError"
    [entry] = [d for d in dead_letters() if d["run_id"] == run_id]
    assert entry["attempts"] == 3 and entry["kind"] == "forward"
    assert ledger(run_id)[-2:] == ["compensation:hotel", "compensation:flight"]


def test_a_compensation_that_fails_ends_the_run_failed_and_stops_the_unwind() -> None:
    run_id = trip.start({"fail_at": "car", "fail_compensation": "hotel"})
    state = finished(trip, run_id)

    assert state.status is Status.FAILED
    # the run's error stays car's failure; hotel's compensation giving up is recorded apart
    assert state.error is not None and state.error.name == "car"
    trouble = state.compensation_error
    assert trouble is not None and trouble.name == "hotel" and trouble.attempts == 3
    kinds = sorted(d["kind"] for d in dead_letters() if d["run_id"] == run_id)
    assert kinds == ["compensation", "forward"]
    # flight's compensation never ran: nothing further runs until an operator acts
    assert "compensation:flight" not in ledger(run_id)
    assert ledger(run_id).count("compensation:hotel") == 3
    assert types(trip, run_id)[-1] == "saga.failed"


def test_a_redelivered_message_does_not_rerun_a_committed_step(redis_client: Client) -> None:
    run_id = trip.start({"trip": "redeliver"})
    before = finished(trip, run_id)
    events_before = trip.events(run_id)

    # When the first step's message is delivered again
    app.send_task("saga.trip.flight", args=(run_id,))
    wait_for(lambda: trip.store.reads.meta(run_id).get("dups") == "1", what="the duplicate to be seen")

    # Then its body did not run again and nothing was committed
    assert ledger(run_id).count("forward:flight") == 1
    assert trip.get(run_id) == before
    assert trip.events(run_id) == events_before


def test_a_duplicate_delivery_of_a_running_step_does_not_run_its_body_twice(redis_client: Client) -> None:
    gate = f"gate:{id(redis_client)}:{threading.get_ident()}"
    run_id = trip.start({"block": {"hotel": gate}})
    wait_for(lambda: "forward:hotel" in ledger(run_id), what="hotel to start")

    app.send_task("saga.trip.hotel", args=(run_id,))
    wait_for(lambda: trip.store.reads.meta(run_id).get("dups") == "1", what="the duplicate to be refused")
    redis_client.rpush(gate, "go")

    assert finished(trip, run_id).status is Status.COMPLETED
    assert ledger(run_id).count("forward:hotel") == 1


def test_the_same_start_key_and_payload_return_the_same_run_and_start_nothing() -> None:
    first = single.start({"n": 1}, key="order-7")
    again = single.start({"n": 1}, key="order-7")
    assert first == again
    finished(single, first)
    assert ledger(first) == ["forward:only"]
    assert single.start({"n": 1}, key="order-8") != first


def test_the_same_start_key_with_another_payload_is_a_key_conflict(redis_client: Client) -> None:
    first = single.start({"n": 1, "to": "alice"}, key="order-9")
    events_before = single.events(first)
    with pytest.raises(KeyConflict) as info:
        single.start({"n": 1, "to": "bob"}, key="order-9")
    assert info.value.run_id == first and "order-9" in str(info.value) and "\n" not in str(info.value)
    # the existing run is untouched, and it still runs once
    assert finished(single, first).payload["to"] == "alice"
    assert single.events(first)[: len(events_before)] == events_before
    assert ledger(first) == ["forward:only"]


def test_concurrent_starts_with_one_key_make_one_run() -> None:
    barrier = threading.Barrier(12)
    ids: list[str] = []

    def start() -> None:
        barrier.wait()
        ids.append(single.start({"n": 1}, key="race-1"))

    threads = [threading.Thread(target=start) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(ids)) == 1 and len(ids) == 12
    finished(single, ids[0])
    assert types(single, ids[0]).count("saga.started") == 1
    assert ledger(ids[0]) == ["forward:only"]


def test_bad_payloads_are_refused_before_anything_is_written(redis_client: Client) -> None:
    keys_before = redis_client.dbsize()
    for bad in ([1, 2], "order", None, {"at": object()}):
        with pytest.raises(InvalidPayload):
            trip.start(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidPayload):
        trip.start([1], key="k-bad")  # type: ignore[arg-type]
    assert redis_client.dbsize() == keys_before


def test_a_step_returning_something_but_an_object_fails_permanently_as_an_unusable_output() -> None:
    run_id = trip.start({"bad_output_at": "hotel"})
    state = finished(trip, run_id)
    assert state.status is Status.COMPENSATED
    # reported as what it is: the body returned, unlike an exception it raised
    assert state.error is not None and state.error.type == "InvalidOutput" and state.error.attempts == 1
    assert "return value of step 'hotel' must be a JSON object" in state.error.message
    assert "ran to its end" in state.error.message
    [entry] = [d for d in dead_letters() if d["run_id"] == run_id]
    assert entry["error_type"] == "InvalidOutput"
    assert ledger(run_id).count("forward:hotel") == 1
    # without compensate_on_failure, the failed step's own compensation does not run
    assert ledger(run_id)[-1:] == ["compensation:flight"]


def test_unknown_run_ids_raise_run_not_found() -> None:
    for call in (trip.get, trip.history, trip.events, trip.rebuild):
        with pytest.raises(RunNotFound, match="no saga run with id 'nope'"):
            call("nope")


def test_wait_times_out_with_a_timeout_error(redis_client: Client) -> None:
    gate = "gate:wait-timeout"
    run_id = trip.start({"block": {"flight": gate}})
    with pytest.raises(TimeoutError) as info:
        trip.wait(run_id, timeout=0.3)
    assert isinstance(info.value, SagaTimeout) and run_id in str(info.value)
    redis_client.rpush(gate, "go")
    finished(trip, run_id)


def test_malformed_and_unknown_messages_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    app.send_task("saga.single.only", args=("no-such-run",))
    app.send_task("saga.single.only", args=(12345,))
    # the worker goes on serving runs
    run_id = single.start({"after": "junk"})
    assert finished(single, run_id).status is Status.COMPLETED


def test_a_run_and_its_bucket_indexes_share_one_cluster_slot_and_finished_runs_expire(redis_client: Client) -> None:
    run_id = single.start({"n": 1})
    finished(single, run_id)
    store = single.store
    keys, indexes = store.keyspace.keys(run_id), store.keyspace.bucket_keys(run_id)
    names = [*keys, indexes.active, indexes.parked, indexes.dlq, indexes.shapes, indexes.status(Status.COMPLETED)]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert redis_client.exists(keys.meta, keys.events) == 2 and redis_client.zscore(indexes.status("completed"), run_id)
    for key in (keys.meta, keys.events):
        assert 6 * 24 * 3600 < redis_client.ttl(key) <= 7 * 24 * 3600


def test_a_failed_run_is_kept_without_expiry(redis_client: Client) -> None:
    run_id = trip.start({"fail_at": "car", "fail_compensation": "flight"})
    assert finished(trip, run_id).status is Status.FAILED
    keys = trip.store.keyspace.keys(run_id)
    assert redis_client.ttl(keys.meta) == redis_client.ttl(keys.events) == -1


def test_events_carry_run_id_version_time_and_step() -> None:
    run_id = trip.start({"fail_at": "pay"})
    finished(trip, run_id)
    for e in trip.events(run_id):
        assert e["run_id"] == run_id and isinstance(e["version"], int) and e["at"].endswith("Z")
        if e["type"].startswith(("step.", "compensation.")):
            assert isinstance(e["step"], int) and isinstance(e["name"], str)


def test_tasks_are_named_and_carry_the_run_id_first() -> None:
    names = set(app.tasks)
    assert {"saga.trip.flight", "saga.trip.flight.compensate", "saga.trip.pay"} <= names
    assert "saga.trip.pay.compensate" not in names
    task: Any = app.tasks["saga.trip.flight"]
    assert task.acks_late and task.reject_on_worker_lost and task.ignore_result


def test_no_pickle_anywhere() -> None:
    assert app.conf.accept_content == ["json"] and app.conf.task_serializer == "json"
    assert json.loads(json.dumps(app.conf.result_accept_content)) == ["json"]


@pytest.mark.skipif(
    not get_settings().broker_url.startswith("redis"),
    reason="reads the queue as a Redis list: needs the Redis broker",
)
def test_dedicated_queues_are_opt_in(settings: Settings) -> None:
    # a registry of its own: the suite's watchdog passes never see this saga
    queued = Saga("queued", app=app, registry=Registry(settings.replace(step_queue="saga-steps-only")))

    @queued.step(name="only")
    def only(payload: dict[str, Any], ctx: StepContext) -> None:
        return None

    run_id = queued.start({"n": 1})
    # the plain worker consumes Celery's default queue only; the step waits on its own queue
    with redis.Redis.from_url(settings.broker_url, decode_responses=True) as broker:
        [message] = broker.lrange("saga-steps-only", 0, -1)
        body = json.loads(message)
        assert body["headers"]["task"] == "saga.queued.only" and body["headers"]["argsrepr"].startswith(f"('{run_id}'")
        broker.delete("saga-steps-only")


def test_log_lines_about_a_run_carry_its_id_saga_and_step(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="saga")
    run_id = trip.start({"fail_at": "car", "flaky": {"hotel": 1}})
    finished(trip, run_id)
    mine = [rec for rec in caplog.records if getattr(rec, "run_id", None) == run_id]
    steps = {(rec.saga, rec.step) for rec in mine}  # type: ignore[attr-defined]
    assert ("trip", "hotel") in steps and ("trip", "car") in steps  # a retry, a give-up
    assert all(f"[run={run_id} saga=trip step=" in rec.getMessage() for rec in mine)


def test_a_state_is_plain_json_and_each_reader_gets_a_copy_of_its_own() -> None:
    # Given a finished run, read as a web handler would
    run_id = trip.start({"trip": "json", "items": [1, 2]})
    state = finished(trip, run_id)
    # Then its payload is a plain JSON object: it serialises as it is, alone or in the whole state
    assert type(state.payload) is dict
    assert json.loads(json.dumps(state.payload)) == state.payload
    assert json.loads(json.dumps(state.to_dict())) == state.to_dict()
    # When a caller changes the dict it received, deep inside too
    state.payload["trip"] = "changed"
    state.payload["items"].append(3)
    # Then nothing stored changed, and no other reader's copy
    again = trip.get(run_id)
    assert again.payload["trip"] == "json" and again.payload["items"] == [1, 2]
    history = trip.history(run_id)
    history[0].payload["items"].append(99)
    assert history[1].payload["items"] == [1, 2]
    assert [s.payload["items"] for s in trip.history(run_id)] == [[1, 2]] * len(history)


def test_a_step_that_changes_its_payload_in_place_changes_nothing_stored() -> None:
    # Each body gets a copy of its own: only what it returns reaches the run
    run_id = trip.start({"scribble": []})
    state = finished(trip, run_id)
    assert state.status is Status.COMPLETED
    assert state.payload["scribble"] == []
    assert all(s.payload["scribble"] == [] for s in trip.history(run_id))


def test_a_second_saga_with_a_declared_name_is_refused() -> None:
    with pytest.raises(SagaDefinitionError, match="'trip' is already declared"):
        Saga("trip", app=app)
    # the first declaration stays the one the process runs
    assert default_registry().get("trip") is trip
    # another registry is another namespace
    elsewhere = Saga("trip", app=app, registry=Registry(default_registry().settings))
    assert elsewhere.registry.get("trip") is elsewhere


@pytest.mark.parametrize(
    ("payload", "error"),
    [({"charge_returns": "junk"}, "InvalidOutput"), ({"charge_times_out": True}, "TimeoutError")],
)
def test_a_step_that_may_have_acted_is_undone_first_when_it_gives_up(payload: dict[str, Any], error: str) -> None:
    # Given a charge that moved the money, then returned what JSON cannot hold / timed out
    run_id = payments.start(payload)
    state = finished(payments, run_id)
    # Then its own compensation ran first, then the steps before it, each once
    assert state.status is Status.COMPENSATED
    assert state.error is not None and state.error.type == error and state.error.name == "charge"
    assert ledger(run_id)[-2:] == ["compensation:charge", "compensation:reserve"]
    undone = {key.rsplit(":", 1)[1] + ":" + key.split(":")[1] for key in effects(run_id)}
    assert undone == {"forward:reserve", "forward:charge", "compensation:charge", "compensation:reserve"}
    assert state.compensated == (1, 0)
    [entry] = [d for d in dead_letters() if d["run_id"] == run_id]
    assert entry["step"] == "charge" and entry["error_type"] == error


def test_async_steps_and_compensations_are_awaited_on_the_worker() -> None:
    ok = asyncs.start({"n": 1})
    bad = asyncs.start({"fail_at": "keep"})
    done = finished(asyncs, ok)
    assert done.status is Status.COMPLETED and done.payload["fetched"] == 1 and done.payload["kept"] is True
    undone = finished(asyncs, bad)
    assert undone.status is Status.COMPENSATED and undone.error is not None
    assert undone.error.type == "PermanentError" and undone.error.attempts == 1  # never a TypeError retried
    assert ledger(bad) == ["forward:fetch", "forward:keep", "compensation:fetch"]
