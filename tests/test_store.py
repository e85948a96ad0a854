"""The Redis store on its own (no Celery): atomic commits, version CAS, fencing, dedup."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from saga import RedisStore, StoreUnavailable
from saga import state as sm
from saga.state import Direction, Shape, Status

SHAPE = Shape(("a", "b"), (True, True))


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    return RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:6]}")


def new_run(store: RedisStore) -> sm.SagaState:
    t = sm.decide_start(str(uuid.uuid4()), "s", {"n": 1})
    assert store.create("s", SHAPE.fingerprint, t, None)
    return t.state


def begin(store: RedisStore, state: sm.SagaState, index: int = 0, attempt: int = 1,
          direction: Direction = Direction.FORWARD, fingerprint: str = SHAPE.fingerprint):
    started = sm.started_event(state.id, SHAPE, direction, index)
    return store.begin(state.id, direction.value, index, attempt, 5000, fingerprint, started)


def test_begin_takes_the_lease_and_refuses_a_second_delivery(store: RedisStore) -> None:
    state = new_run(store)
    first = begin(store, state)
    assert first.outcome == "run" and first.token and first.attempt == 1
    assert begin(store, state).outcome == "busy"
    assert store.meta(state.id)["dups"] == "1"


def test_only_one_of_two_racing_commits_on_one_version_applies(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    running = sm.decide_begin(state, SHAPE, 0, 1)
    results: list[bool] = []

    def commit() -> None:
        results.append(store.commit(state, running, token=b.token).applied)

    threads = [threading.Thread(target=commit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert [s.version for s in store.history(state.id)] == [1, 2]


def test_an_attempt_that_lost_its_lease_cannot_commit(store: RedisStore, redis_url: str) -> None:
    # Given attempt 1 took the lease and began the run
    state = new_run(store)
    one = begin(store, state)
    running = sm.decide_begin(state, SHAPE, 0, 1)
    assert store.commit(state, running, token=one.token).applied
    # When its lease expires and attempt 2 takes over
    redis.Redis.from_url(redis_url).delete(store.keys(state.id).lease)
    two = begin(store, running.state)
    assert two.outcome == "run" and two.token != one.token
    # Then attempt 1's late result is refused, attempt 2's is applied
    done = sm.decide_step_succeeded(running.state, SHAPE, 0, {"a": 1})
    late = store.commit(running.state, done, token=one.token, done_field="forward:0", release=True)
    assert (late.applied, late.reason) == (False, "fenced")
    assert store.commit(running.state, done, token=two.token, done_field="forward:0", release=True).applied
    assert store.get(state.id).checkpoints[0].name == "a"


def test_a_zombie_is_fenced_out_even_when_nobody_holds_the_lease_any_more(store: RedisStore, redis_url: str) -> None:
    state = new_run(store)
    one = begin(store, state)
    redis.Redis.from_url(redis_url).delete(store.keys(state.id).lease)
    ok, token = store.note(state.id, [], fence=True)  # what a resume does
    assert ok and token != one.token
    done = sm.decide_begin(state, SHAPE, 0, 1)
    assert store.commit(state, done, token=one.token).reason == "fenced"


def test_a_commit_retried_after_a_lost_reply_is_recognised_not_doubled(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    running = sm.decide_begin(state, SHAPE, 0, 1)
    store.commit(state, running, token=b.token)
    b2 = begin(store, running.state)
    assert b2.outcome == "busy"  # the lease is still b's
    done = sm.decide_step_succeeded(running.state, SHAPE, 0, None)
    assert store.commit(running.state, done, token=b.token, done_field="forward:0", release=True).reason == "ok"
    again = store.commit(running.state, done, token=b.token, done_field="forward:0", release=True)
    assert (again.applied, again.reason) == (True, "again")
    assert len(store.history(state.id)) == 3


def test_a_committed_step_is_reported_done_to_any_later_delivery(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    running = sm.decide_begin(state, SHAPE, 0, 1)
    store.commit(state, running, token=b.token)
    done = sm.decide_step_succeeded(running.state, SHAPE, 0, None)
    store.commit(running.state, done, token=b.token, done_field="forward:0", release=True)
    again = begin(store, state, index=0)
    assert again.outcome == "done" and again.extra == "1"  # nothing holds the run: caller re-dispatches
    assert begin(store, state, index=1, direction=Direction.COMPENSATION).outcome == "stale"


def test_a_run_started_under_another_definition_is_refused(store: RedisStore) -> None:
    state = new_run(store)
    drift = begin(store, state, fingerprint=Shape(("a", "x"), (True, True)).fingerprint)
    assert drift.outcome == "drift" and drift.extra == SHAPE.fingerprint


def test_creating_the_same_run_twice_writes_once(store: RedisStore) -> None:
    t = sm.decide_start("fixed-id", "s", {"n": 1})
    assert store.create("s", SHAPE.fingerprint, t, "k")
    assert not store.create("s", SHAPE.fingerprint, sm.decide_start("fixed-id", "s", {"n": 2}), "k")
    assert store.get("fixed-id").payload["n"] == 1 and len(store.events("fixed-id")) == 1


def test_retry_hands_the_lease_to_the_next_attempt_only(store: RedisStore) -> None:
    pending = new_run(store)
    b = begin(store, pending)
    state = sm.decide_begin(pending, SHAPE, 0, 1).state
    assert store.commit(pending, sm.decide_begin(pending, SHAPE, 0, 1), token=b.token).applied
    event = sm.decide_retry(state, SHAPE, Direction.FORWARD, 0, 1, OSError("x"), 0.0)
    assert store.record(state.id, b.token, [event], "backoff:2", 5000)
    assert begin(store, state, attempt=1).outcome == "busy"  # a stray copy of attempt 1
    nxt = begin(store, state, attempt=2)
    assert nxt.outcome == "run" and nxt.attempt == 2
    assert [(e["type"], e["attempt"]) for e in store.events(state.id)[-2:]] == [
        ("step.retrying", 1), ("step.started", 2)]


def test_an_unreachable_redis_is_one_clear_line() -> None:
    store = RedisStore("redis://:secret@127.0.0.1:1/0", retries=0)
    with pytest.raises(StoreUnavailable) as info:
        store.get("x")
    message = str(info.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in message and "SAGA_REDIS_URL" in message
    assert "secret" not in message and "\n" not in message


def test_terminal_status_values() -> None:
    assert {s.value for s in Status if s.terminal} == {"completed", "compensated", "failed"}


def test_scripts_forgotten_by_redis_are_loaded_again(store: RedisStore, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).script_flush()  # what a restarted Redis without them looks like
    state = new_run(store)
    b = begin(store, state)
    redis.Redis.from_url(redis_url).script_flush()
    assert store.commit(state, sm.decide_begin(state, SHAPE, 0, 1), token=b.token).applied
    assert store.get(state.id).status is Status.RUNNING
