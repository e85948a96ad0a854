"""The engine's contract, proven on both tiers with the same sagas (``tests/contract_sagas.py``):

- ``redis``: the suite's real Redis (its own key prefix) and an in-thread Celery worker;
- ``memory``: ``memory://``, the same Lua scripts in fakeredis, steps run inline by Celery's
  eager mode: no server, no worker.

Each tier is applied through the sagas' registry (the plugin's ``saga_registry`` fixture,
overridden here for that registry), never by the order of imports. Where the tiers cannot
behave the same — crash recovery needs a process that outlives another — the test says so.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from saga import KeyConflict, SagaState, Settings, SettingsError, Status
from saga.archive import ArchiveFeed
from saga.core import Direction, EventType, decide, note_event, parked_event
from saga.registry import Registry
from saga.store import CommitOptions, connect
from saga.testing import RedisServer, WorkerProcess, configured, wait_for
from tests import contract_sagas as contract

TIERS = ("redis", "memory")


@pytest.fixture(scope="module", params=TIERS)
def tier(request: pytest.FixtureRequest) -> str:
    """The tier of the test: every contract test runs on both."""
    return str(request.param)


@pytest.fixture
def saga_settings(tier: str, settings: Settings, saga_redis: RedisServer) -> Settings:
    """The plugin's fixture, overridden: the suite's store (a cluster in the cluster pass) under
    the key prefix ``contract`` with the broker on the plugin's private Redis (the suite's own
    worker consumes the suite's broker and knows no contract saga), or the in-memory server
    ``memory://contract``."""
    if tier == "memory":
        return Settings(redis_url="memory://contract", metrics_port=0)
    return settings.replace(key_prefix="contract", broker_url=saga_redis.url)


@pytest.fixture
def saga_registry(saga_settings: Settings) -> Iterator[Registry]:
    """The plugin's fixture, overridden for the contract sagas' own registry and app."""
    with configured(contract.registry, saga_settings, contract.app):
        yield contract.registry


@pytest.fixture
def on_tier(saga_worker: Callable[..., Any], run_saga: Callable[..., SagaState]) -> Callable[..., SagaState]:
    """Start a run and return its end: an in-thread worker runs the steps on ``redis``; on
    ``memory`` they run inline and no worker starts."""
    saga_worker(contract.app)
    return run_saga


def ledger(state: SagaState) -> list[str]:
    return contract.ledger(state.id)


def test_a_run_completes_with_every_output_merged(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12})
    assert state.status is Status.COMPLETED
    assert state.payload == {
        "sku": "book",
        "amount": 12,
        "reserved": "book",
        "charged": 12,
        "charge_attempt": 1,
        "shipped": True,
    }
    assert ledger(state) == ["forward:reserve", "forward:charge", "forward:ship"]


def test_a_permanent_failure_compensates_in_reverse_and_dead_letters(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12, "fail_at": "ship"})
    assert state.status is Status.COMPENSATED
    assert ledger(state) == [
        "forward:reserve",
        "forward:charge",
        "forward:ship",
        "compensation:charge",
        "compensation:reserve",
    ]
    letters = [e for e in contract.registry.store.indexes.dead_letters() if e["run_id"] == state.id]
    assert [(e["step"], e["kind"]) for e in letters] == [("ship", "forward")]


def test_rejected_compensates_without_a_dead_letter(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12, "reject_at": "charge"})
    assert state.status is Status.COMPENSATED
    assert ledger(state) == ["forward:reserve", "forward:charge", "compensation:reserve"]
    assert not [e for e in contract.registry.store.indexes.dead_letters() if e["run_id"] == state.id]


def test_a_transient_failure_is_retried_then_succeeds(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12, "flaky": {"charge": 2}})
    assert state.status is Status.COMPLETED
    assert state.payload["charge_attempt"] == 3
    assert ledger(state) == ["forward:reserve", "forward:charge", "forward:charge", "forward:charge", "forward:ship"]
    retries = [e for e in contract.order.events(state.id) if e["type"] == EventType.STEP_RETRYING.value]
    assert len(retries) == 2


def test_the_same_key_and_payload_is_the_same_run_and_starts_nothing(on_tier: Callable[..., SagaState]) -> None:
    key = f"order-{uuid.uuid4().hex[:8]}"
    payload = {"sku": "book", "amount": 12}
    first = on_tier(contract.order, payload, key=key)
    assert contract.order.start(payload, key=key) == first.id
    assert ledger(first) == ["forward:reserve", "forward:charge", "forward:ship"]
    with pytest.raises(KeyConflict):
        contract.order.start({"sku": "pen", "amount": 3}, key=key)


def test_history_has_every_version_and_rebuild_equals_get(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12, "fail_at": "ship"})
    history = contract.order.history(state.id)
    assert [s.version for s in history] == list(range(1, state.version + 1))
    assert history[-1] == state == contract.order.get(state.id)
    assert contract.order.rebuild(state.id) == contract.order.get(state.id)


def test_a_parallel_group_completes(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.fanout, {"sku": "lamp", "amount": 40})
    assert state.status is Status.COMPLETED
    assert {"picked", "packed", "labelled", "dispatched"} <= set(state.payload)
    steps = ledger(state)
    assert steps[0] == "forward:pick" and steps[-1] == "forward:dispatch"
    assert sorted(steps[1:3]) == ["forward:label", "forward:pack"]


def test_a_state_round_trips_through_json(on_tier: Callable[..., SagaState]) -> None:
    state = on_tier(contract.order, {"sku": "book", "amount": 12, "reject_at": "ship"})
    assert SagaState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_every_script_runs_on_the_tier(on_tier: Callable[..., SagaState], saga_settings: Settings) -> None:
    """The scripts the runs above do not reach (renew, note, park, the archive feed's entries
    and archived.lua), called as the heartbeat, a resume, the watchdog and the archiver do."""
    store = Registry(saga_settings.replace(archive_url="sqlite:///unused.db")).store  # the feed on
    shape = contract.order.shape
    start = decide.decide_start(str(uuid.uuid4()), contract.order.name, {"sku": "cup", "amount": 2})
    assert store.create(shape, start, None, check_at=time.time() + 30) == "created"
    state = start.state
    begun = store.begin(
        state.id, Direction.FORWARD, 0, attempt=1, lease_ms=5000, fingerprint=shape.fingerprint, check_at=time.time()
    )
    assert begun.outcome == "run"
    assert store.renew(state.id, begun.token, 5000)
    assert store.note_events(state, [note_event(state, EventType.SAGA_RESUMED, reason="a test")]) == (True, "")
    assert store.park(state, parked_event(state, "held"), "held") == "leased"
    done = decide.decide_step_succeeded(state, shape, 0, {"reserved": "cup"})
    options = CommitOptions(token=begun.token, release=True, dedup_mark="forward:0")
    assert store.commit(state, done, options, check_at=time.time() + 30).applied
    assert store.park(done.state, parked_event(done.state, "held"), "held") == "parked"
    assert state.id in {e.run_id for e in ArchiveFeed(store).read(100)}

    finished = on_tier(contract.order, {"sku": "book", "amount": 12})
    copied = (finished.id, finished.version, len(contract.order.events(finished.id)))
    assert ArchiveFeed(store).expire_archived([copied], 60_000) == 1


def test_memory_runs_finish_inside_start_and_any_reader_sees_them(saga_registry: Registry, tier: str) -> None:
    if tier != "memory":
        pytest.skip("a memory-tier guarantee: start() runs every step inline")
    run_id = contract.order.start({"sku": "book", "amount": 12})
    assert contract.order.get(run_id).status is Status.COMPLETED  # no waiting: it ran in start()
    reader = connect(saga_registry.settings.redis_url, retries=0)  # another client, the same server
    assert reader.lrange(f"contract:ledger:{run_id}", 0, -1) == ["forward:reserve", "forward:charge", "forward:ship"]
    other = connect("memory://contract-elsewhere", retries=0)
    assert other.lrange(f"contract:ledger:{run_id}", 0, -1) == []


def test_a_long_memory_run_runs_its_steps_one_after_another(saga_registry: Registry, tier: str) -> None:
    if tier != "memory":
        pytest.skip("a memory-tier guarantee: inline steps do not nest (a worker runs one task at a time anyway)")
    run_id = contract.long_run.start({})
    state = contract.long_run.get(run_id)
    assert state.status is Status.COMPLETED
    assert state.payload == {"last": 299, "attempts": 300}


def test_a_memory_url_refuses_a_broker_and_a_bad_name() -> None:
    with pytest.raises(SettingsError, match="leave SAGA_BROKER_URL unset"):
        Settings.from_env({"SAGA_REDIS_URL": "memory://", "SAGA_BROKER_URL": "redis://127.0.0.1:6379/0"})
    with pytest.raises(SettingsError, match="not a memory URL"):
        Settings.from_env({"SAGA_REDIS_URL": "memory://a/b"})
    settings = Settings.from_env({"SAGA_REDIS_URL": "memory://unit"})
    assert settings.broker_url == "memory://unit"


class TestCrashRecovery:
    """Crash recovery applies to the redis tier only: a killed worker's run is resumed by a
    worker that runs on after it, from the state both share in Redis. The in-memory tier lives
    and dies with its one process, so there is nothing left to recover."""

    @pytest.fixture
    def saga_settings(self, tier: str, saga_redis: RedisServer) -> Settings:
        if tier == "memory":
            pytest.skip("crash recovery is redis-tier only: the in-memory tier ends with its process")
        return Settings(redis_url=saga_redis.url, lease_seconds=1, watchdog_interval=0.2, metrics_port=0)

    def test_a_killed_worker_is_restarted_and_the_run_completes(
        self, saga_worker_process: Callable[..., WorkerProcess], saga_registry: Registry
    ) -> None:
        worker = saga_worker_process("tests.contract_sagas", concurrency=1)
        run_id = contract.order.start({"sku": "book", "amount": 12, "hang_at": "charge"})
        wait_for(lambda: "forward:charge" in contract.ledger(run_id), timeout=60, what="the charge to begin")
        worker.kill()
        assert not worker.alive and worker.children() == []
        worker.restart()
        state = contract.order.wait(run_id, timeout=60)
        assert state.status is Status.COMPLETED
        assert state.payload["charge_attempt"] == 2
        assert contract.ledger(run_id) == ["forward:reserve", "forward:charge", "forward:charge", "forward:ship"]
