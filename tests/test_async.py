"""The asyncio client: ``start_async``, ``get_async``, ``wait_async``, ``history_async``,
``events_async``, ``find_async`` against real Redis and the suite's in-process worker, and the
FastAPI example (``workers/api.py``) called through httpx, its worker on a private Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from saga import InvalidPayload, KeyConflict, RunNotFound, SagaState, SagaTimeout, Status
from saga.registry import Registry
from tests.sagas import client, trip
from workers.api import api

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("worker")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_run_started_and_awaited_from_a_coroutine_reads_as_the_sync_calls_do() -> None:
    key = f"order-{uuid.uuid4().hex}"
    run_id = await trip.start_async({"amount": 12}, key=key, tags={"customer": "c-1"})
    state = await trip.wait_async(run_id)
    assert state.status is Status.COMPLETED
    assert state == trip.get(run_id) == await trip.get_async(run_id) == await trip.find_async(key)
    assert await trip.history_async(run_id) == trip.history(run_id)
    assert await trip.events_async(run_id) == trip.events(run_id)
    assert state.tags == {"customer": "c-1"}
    # the same key and payload: the same run, nothing started; another payload: a conflict
    assert await trip.start_async({"amount": 12}, key=key) == run_id
    with pytest.raises(KeyConflict):
        await trip.start_async({"amount": 13}, key=key)


async def test_a_compensated_run_is_awaited_like_a_completed_one() -> None:
    run_id = await trip.start_async({"fail_at": "car"})
    state = await trip.wait_async(run_id)
    assert state.status is Status.COMPENSATED and state.error is not None
    assert state == trip.rebuild(run_id)


async def test_bad_calls_raise_the_sync_calls_errors() -> None:
    with pytest.raises(InvalidPayload):
        await trip.start_async(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(RunNotFound):
        await trip.get_async(str(uuid.uuid4()))
    with pytest.raises(RunNotFound):
        await trip.events_async(str(uuid.uuid4()))
    with pytest.raises(RunNotFound):
        await trip.find_async("no-such-key")


async def test_waiting_never_blocks_the_event_loop() -> None:
    gate = f"gate:{uuid.uuid4().hex}"
    run_id = await trip.start_async({"block": {"hotel": gate}})
    with pytest.raises(SagaTimeout):
        await trip.wait_async(run_id, timeout=0.2)
    ticks = 0

    async def ticker() -> None:
        # only runs if wait_async leaves the loop free; it is what lets the run finish
        nonlocal ticks
        while ticks < 20:
            ticks += 1
            await asyncio.sleep(0.001)
        await asyncio.to_thread(client().rpush, gate, "go")

    state, _ = await asyncio.gather(trip.wait_async(run_id, timeout=60), ticker())
    assert state.status is Status.COMPLETED and ticks == 20


async def test_many_concurrent_waiters_of_one_loop_are_all_woken() -> None:
    run_ids = [await trip.start_async({"n": n}) for n in range(20)]
    states = await asyncio.gather(*(trip.wait_async(r) for r in run_ids))
    assert [s.id for s in states] == run_ids
    assert all(s.status is Status.COMPLETED for s in states)


# --- the FastAPI example, as a user calls it -------------------------------------------------


async def test_the_fastapi_example_starts_and_returns_runs_as_json(
    saga_registry: Registry, saga_worker_process: Callable[..., Any]
) -> None:
    # the example's worker, as deployed: `celery -A workers worker`, on the plugin's private Redis
    saga_worker_process("workers")
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as http:
        started = await http.post("/orders", params={"key": "o-7"}, json={"order_id": "o-7", "amount": 30})
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        again = await http.post("/orders", params={"key": "o-7"}, json={"order_id": "o-7", "amount": 30})
        assert again.json() == {"run_id": run_id}
        conflict = await http.post("/orders", params={"key": "o-7"}, json={"order_id": "o-7", "amount": 31})
        assert conflict.status_code == 409 and "o-7" in conflict.json()["detail"]

        done = await http.get(f"/orders/{run_id}", params={"wait": 30})
        assert done.status_code == 200
        state = SagaState.from_dict(done.json())
        assert state.status is Status.COMPLETED and state.payload["shipment_id"].startswith("shp-")
        by_key = await http.get("/orders/by-key/o-7")
        assert SagaState.from_dict(by_key.json()) == state
        # the same state, through json.dumps as any other code would send it
        assert SagaState.from_dict(json.loads(state.to_json())) == state == SagaState.from_dict(by_key.json())

        assert (await http.post("/orders", json=[1, 2])).status_code == 422
        assert (await http.get(f"/orders/{uuid.uuid4()}")).status_code == 404
        assert (await http.get("/orders/by-key/nope")).status_code == 404
