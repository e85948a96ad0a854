"""The hot tier stays lean and bounded (no Celery: the store on its own, on the suite's Redis or
Redis Cluster): a finished run costs its payload and outputs, not steps × payload; every index
entry leaves with its run; listing and the dead-letter queue are read a page at a time; the
bucket layout is recorded and a process with another one is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from saga import RedisStore, SettingsError, Status
from saga.control import runs as control
from saga.core import SagaState, Shape, decide
from saga.registry import Registry
from saga.settings import Settings
from saga.store import Client, CommitOptions, connect_node
from saga.testing import RedisServer, wait_for


def new_store(url: str, **options: Any) -> RedisStore:
    return RedisStore(url, prefix=f"t{uuid.uuid4().hex[:6]}", **options)


def run_through(store: RedisStore, shape: Shape, payload: dict[str, Any], *, ttl_ms: int = 0) -> SagaState:
    """Start a run and commit every step of ``shape`` as a worker would (no outputs), to the end."""
    start = decide.decide_start(str(uuid.uuid4()), "s", payload)
    assert store.create(shape, start, None, check_at=time.time() + 30) == "created"
    state = start.state
    for index in range(len(shape.steps)):
        moved = decide.decide_step_succeeded(state, shape, index, None)
        done = moved.state.status.terminal
        assert store.commit(state, moved, check_at=None if done else time.time() + 30, ttl_ms=ttl_ms).applied
        state = moved.state
    return state


def give_up(store: RedisStore, shape: Shape, payload: dict[str, Any]) -> tuple[SagaState, str]:
    """Start a run whose first step gives up with nothing to undo: compensated, one dead letter."""
    start = decide.decide_start(str(uuid.uuid4()), "s", payload)
    store.create(shape, start, None, check_at=time.time() + 30)
    failed, entry = decide.decide_step_gave_up(start.state, shape, 0, RuntimeError("no"), 1)
    assert store.commit(start.state, failed, CommitOptions(dead_entry=entry), check_at=None).applied
    return failed.state, entry["id"]


def fail(store: RedisStore, shape: Shape) -> SagaState:
    """A run that failed (an operator must act): it keeps its snapshot and no expiry."""
    start = decide.decide_start(str(uuid.uuid4()), "s", {"n": 1})
    store.create(shape, start, None, check_at=time.time() + 30)
    failed, entry = decide.decide_fail(start.state, shape.steps[0], RuntimeError("corrupt"))
    assert store.commit(start.state, failed, CommitOptions(dead_entry=entry), check_at=None).applied
    return failed.state


def run_bytes(store: RedisStore, client: Client, run_id: str) -> int:
    keys = store.keyspace.keys(run_id)
    return sum(int(client.memory_usage(key) or 0) for key in (keys.meta, keys.events))


def test_a_finished_run_costs_its_payload_once_whatever_its_number_of_steps(
    redis_url: str, redis_client: Client
) -> None:
    store = new_store(redis_url)
    payload = {"blob": "x" * 10_000}
    short = run_through(store, Shape(tuple(f"s{i}" for i in range(5)), (False,) * 5), payload)
    long = run_through(store, Shape(tuple(f"s{i}" for i in range(30)), (False,) * 30), payload)
    short_bytes, long_bytes = run_bytes(store, redis_client, short.id), run_bytes(store, redis_client, long.id)
    # the payload is stored once (in the start event), and 25 more steps that return nothing are
    # a few dozen bytes each: not 25 more copies of the payload
    assert 10_000 < short_bytes < 13_000
    assert long_bytes - short_bytes < 25 * 100
    # and every version is still there, rebuilt from the events
    assert [s.version for s in store.reads.history(long.id)] == list(range(1, 32))
    assert store.reads.get(long.id) == long and store.reads.at_version(long.id, 7).current_step == 6


def test_index_entries_leave_with_their_run(redis_url: str, redis_client: Client) -> None:
    # Given a completed run whose keys expire at once, and a failed one that stays
    shape = Shape(("a",), (False,))
    store = new_store(redis_url)
    gone = run_through(store, shape, {"n": 1}, ttl_ms=1)
    kept = fail(store, shape)
    wait_for(lambda: not redis_client.exists(store.keyspace.keys(gone.id).meta), what="the run's keys to expire")
    registry = Registry(Settings(redis_url=redis_url, key_prefix=store.keyspace.prefix))
    # When runs are listed, the expired run is left out and its index entry dropped
    assert [s.id for s in control.list_runs(registry=registry)] == [kept.id]
    assert redis_client.zscore(store.keyspace.bucket_keys(gone.id).status(Status.COMPLETED), gone.id) is None
    # and the watchdog's tidying drops entries of runs finished before the retention horizon
    other = run_through(store, shape, {"n": 2}, ttl_ms=1)
    assert store.indexes.trim_finished(time.time() + 1) == 1
    assert redis_client.zscore(store.keyspace.bucket_keys(other.id).status(Status.COMPLETED), other.id) is None
    # A run off the watchdog's list stays off it: finished runs are not watched
    assert store.indexes.deadline(gone.id) is None and store.indexes.deadline(kept.id) is None


def test_the_dead_letter_queue_is_read_a_page_at_a_time(redis_url: str) -> None:
    store = new_store(redis_url)
    shape = Shape(("a", "b"), (False, False))
    ids = [give_up(store, shape, {"n": n})[1] for n in range(7)]
    seen: list[str] = []
    cursor = ""
    for _ in range(5):
        page = store.indexes.dead_letter_page(3, cursor)
        seen += [e["id"] for e in page.entries]
        assert all(e["cursor"] for e in page.entries) and len(page.entries) <= 3
        cursor = page.cursor
        if not cursor:
            break
    assert seen == ids  # oldest first, each once
    assert store.indexes.dead_letter_depth() == 7 and [e["id"] for e in store.indexes.dead_letters()] == ids


def test_listing_by_status_reads_what_the_page_needs_not_every_run() -> None:
    # Given 600 finished runs, 12 of them failed, in a Redis of this test's own (to count commands)
    with RedisServer() as server:
        store = new_store(server.url)
        shape = Shape(("a",), (False,))
        failed: list[str] = []
        for n in range(600):
            if n % 50 == 0:
                failed.append(fail(store, shape).id)
            else:
                run_through(store, shape, {"n": n})
        registry = Registry(Settings(redis_url=server.url, key_prefix=store.keyspace.prefix))
        with connect_node(server.url) as client:
            before = client.info("commandstats")
            # When the newest 5 failed runs are listed
            runs = control.list_runs(status="failed", limit=5, registry=registry)
            after = client.info("commandstats")
    # Then they are the newest failed ones, newest first, and reading them took a few commands:
    # one page of each bucket's failed-runs index and the five runs, not a read of every run
    assert [s.id for s in runs] == failed[::-1][:5]
    calls = {name: int(stat["calls"]) - int(before.get(name, {"calls": 0})["calls"]) for name, stat in after.items()}
    assert sum(n for name, n in calls.items() if name != "cmdstat_info") <= 50


def test_another_bucket_count_is_refused_with_one_line(redis_url: str) -> None:
    store = new_store(redis_url, buckets=16)
    run_through(store, Shape(("a",), (False,)), {"n": 1})
    other = RedisStore(redis_url, prefix=store.keyspace.prefix, buckets=8)
    with pytest.raises(SettingsError) as info:
        other.reads.get("anything")
    message = str(info.value)
    assert "SAGA_BUCKETS is 8" in message and "laid out with 16" in message and "\n" not in message


@pytest.fixture
def cluster_url(redis_url: str, redis_cluster: object) -> Iterator[str]:
    if redis_cluster is None:
        pytest.skip("the store is a Redis Cluster only with TEST_STORE=cluster")
    yield redis_url.replace("redis://", "redis+cluster://", 1)


def test_an_explicit_cluster_url_works_like_a_detected_one(cluster_url: str) -> None:
    store = new_store(cluster_url)
    state = run_through(store, Shape(("a", "b"), (False, False)), {"n": 1})
    assert store.reads.get(state.id).status is Status.COMPLETED
