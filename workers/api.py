"""A FastAPI front end for the order saga: ``POST /orders`` starts a run, ``GET /orders/{id}``
returns its state as JSON (optionally waiting for its end), ``GET /orders/by-key/{key}`` finds
the run started with a business key. Every call is asyncio end to end: nothing blocks the event
loop while Redis answers or a run finishes.

Run it with ``uvicorn workers.api:api`` next to a worker (``make worker``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException

from saga import InvalidPayload, KeyConflict, RunNotFound, SagaState, SagaTimeout

from .orders import order

api = FastAPI(title="orders")


@api.post("/orders", status_code=202)
async def start_order(body: dict[str, Any], key: str | None = None) -> dict[str, str]:
    """Start an order; the same ``key`` and body return the same run (safe to retry)."""
    try:
        run_id = await order.start_async(body, key=key)
    except KeyConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except InvalidPayload as exc:
        raise HTTPException(422, str(exc)) from None
    return {"run_id": run_id}


@api.get("/orders/{run_id}")
async def get_order(run_id: str, wait: float = 0) -> SagaState:
    """The run's state; with ``wait`` (seconds), once it has ended or when ``wait`` passes."""
    try:
        if wait > 0:
            try:
                return await order.wait_async(run_id, timeout=min(wait, 60))
            except SagaTimeout:
                pass
        return await order.get_async(run_id)
    except RunNotFound:
        raise HTTPException(404, f"no order run {run_id}") from None


@api.get("/orders/by-key/{key}")
async def find_order(key: str) -> dict[str, Any]:
    """The state of the run started with business key ``key``, as ``state.to_dict()``."""
    try:
        state = await order.find_async(key)
    except RunNotFound:
        raise HTTPException(404, f"no order started with key {key!r}") from None
    return state.to_dict()
