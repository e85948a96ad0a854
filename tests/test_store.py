"""The Redis store on its own (no Celery): atomic commits, version CAS, fencing, dedup."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from saga import RedisStore, StoreUnavailable
from saga.core import Direction, SagaState, Shape, Status, Transition, decide
from saga.store import Begin, Client, CommitOptions, CommitResult

SHAPE = Shape(("a", "b"), (True, True))


@pytest.fixture
def store(redis_url: str) -> RedisStore:
    return RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:6]}")


def new_run(store: RedisStore) -> SagaState:
    t = decide.decide_start(str(uuid.uuid4()), "s", {"n": 1})
    assert store.create(SHAPE, t, None, check_at=time.time() + 30) == "created"
    return t.state


def begin(
    store: RedisStore,
    state: SagaState,
    index: int = 0,
    attempt: int = 1,
    direction: Direction = Direction.FORWARD,
    fingerprint: str = SHAPE.fingerprint,
) -> Begin:
    return store.begin(
        state.id,
        direction,
        index,
        attempt=attempt,
        lease_ms=5000,
        fingerprint=fingerprint,
        check_at=time.time() + 6,
    )


def commit(
    store: RedisStore, before: SagaState, transition: Transition, token: str = "", release: bool = False
) -> CommitResult:
    """Commit as the engine does for step 0 of a run that goes on (watchdog due a lease later)."""
    options = CommitOptions(token=token, dedup_mark="forward:0" if token else "", release=release)
    return store.commit(before, transition, options, check_at=time.time() + 6)


def test_begin_takes_the_lease_and_refuses_a_second_delivery(store: RedisStore) -> None:
    state = new_run(store)
    first = begin(store, state)
    assert first.outcome == "run" and first.token and first.attempt == 1
    assert begin(store, state).outcome == "busy"
    assert store.reads.meta(state.id)["dups"] == "1"


def test_only_one_of_racing_commits_on_one_version_applies(store: RedisStore) -> None:
    # Given eight different transitions decided from the same version
    state = new_run(store)
    results: dict[int, bool] = {}

    def race(i: int) -> None:
        moved = decide.decide_step_succeeded(state, SHAPE, 0, {"winner": i})
        results[i] = commit(store, state, moved).applied

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one is applied, and it is the one the stored state shows
    [winner] = [i for i, applied in results.items() if applied]
    assert len(results) == 8
    assert store.reads.get(state.id).payload["winner"] == winner
    assert [s.version for s in store.reads.history(state.id)] == [1, 2]
    assert len(store.reads.events(state.id)) == 2  # saga.started + the winner's step.succeeded


def test_an_attempt_that_lost_its_lease_cannot_commit(store: RedisStore, redis_client: Client) -> None:
    # Given attempt 1 took the lease of the first step
    state = new_run(store)
    one = begin(store, state)
    # When its lease expires and attempt 2 takes over
    redis_client.delete(store.keyspace.keys(state.id).lease)
    two = begin(store, state)
    assert two.outcome == "run" and two.token != one.token
    # Then attempt 1's late result is refused, attempt 2's is applied
    done = decide.decide_step_succeeded(state, SHAPE, 0, {"a": 1})
    late = commit(store, state, done, one.token, release=True)
    assert (late.applied, late.reason) == (False, "fenced")
    assert commit(store, state, done, two.token, release=True).applied
    assert store.reads.get(state.id).checkpoints[0].name == "a"


def test_a_zombie_is_fenced_out_even_when_nobody_holds_the_lease_any_more(
    store: RedisStore, redis_client: Client
) -> None:
    state = new_run(store)
    one = begin(store, state)
    redis_client.delete(store.keyspace.keys(state.id).lease)
    ok, token = store.note_events(state, [], fence=True)  # what a resume does
    assert ok and token != one.token
    done = decide.decide_step_succeeded(state, SHAPE, 0, None)
    assert commit(store, state, done, one.token).reason == "fenced"


def test_a_commit_retried_after_a_lost_reply_is_recognised_not_doubled(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    assert begin(store, state).outcome == "busy"  # the lease is b's
    done = decide.decide_step_succeeded(state, SHAPE, 0, None)
    assert commit(store, state, done, b.token, release=True).reason == "ok"
    again = commit(store, state, done, b.token, release=True)
    assert (again.applied, again.reason) == (True, "again")
    assert len(store.reads.history(state.id)) == 2


def test_a_committed_step_is_reported_done_to_any_later_delivery(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    done = decide.decide_step_succeeded(state, SHAPE, 0, None)
    commit(store, state, done, b.token, release=True)
    again = begin(store, state, index=0)
    assert again.outcome == "done" and again.idle  # nothing holds the run: caller re-dispatches
    assert begin(store, state, index=1, direction=Direction.COMPENSATION).outcome == "stale"


def test_a_run_started_under_another_definition_is_refused(store: RedisStore) -> None:
    state = new_run(store)
    drift = begin(store, state, fingerprint=Shape(("a", "x"), (True, True)).fingerprint)
    assert drift.outcome == "drift" and drift.stored_fingerprint == SHAPE.fingerprint


def test_creating_the_same_run_twice_writes_once(store: RedisStore) -> None:
    t = decide.decide_start("fixed-id", "s", {"n": 1})
    assert store.create(SHAPE, t, "k", check_at=time.time() + 30) == "created"
    again = decide.decide_start("fixed-id", "s", {"n": 2})
    assert store.create(SHAPE, again, "k", check_at=time.time() + 30) == "conflict"
    assert store.reads.get("fixed-id").payload["n"] == 1 and len(store.reads.events("fixed-id")) == 1


def test_retry_hands_the_lease_to_the_next_attempt_only(store: RedisStore) -> None:
    state = new_run(store)
    b = begin(store, state)
    event = decide.decide_retry(state, SHAPE, Direction.FORWARD, 0, 1, OSError("x"), 0.0)
    assert store.record_retry(state, b.token, [event], "backoff:2", 5000)
    assert begin(store, state, attempt=1).outcome == "busy"  # a stray copy of attempt 1
    nxt = begin(store, state, attempt=2)
    assert nxt.outcome == "run" and nxt.attempt == 2
    assert [(e["type"], e["attempt"]) for e in store.reads.events(state.id)[-2:]] == [
        ("step.retrying", 1),
        ("step.started", 2),
    ]


def test_an_unreachable_redis_is_one_clear_line() -> None:
    store = RedisStore("redis://:secret@127.0.0.1:1/0", retries=0)
    with pytest.raises(StoreUnavailable) as info:
        store.reads.get("x")
    message = str(info.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in message and "SAGA_REDIS_URL" in message
    assert "secret" not in message and "\n" not in message


def test_terminal_status_values() -> None:
    assert {s.value for s in Status if s.terminal} == {"completed", "compensated", "failed"}


def test_scripts_forgotten_by_redis_are_loaded_again(store: RedisStore, redis_client: Client) -> None:
    redis_client.script_flush()  # what a restarted Redis without them looks like
    state = new_run(store)
    b = begin(store, state)
    redis_client.script_flush()
    done = decide.decide_step_succeeded(state, SHAPE, 0, None)
    assert commit(store, state, done, b.token).applied
    assert store.reads.get(state.id).status is Status.RUNNING
