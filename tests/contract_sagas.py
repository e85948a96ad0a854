"""The sagas of the contract tests (``tests/test_contract.py``), one module for both tiers.

They are declared at import in a registry of their own that nothing configured yet: each tier's
fixture configures it (``saga.testing.configured``: the registry and this app), so a run goes
where the fixture says, whatever was imported first. A worker process
(``celery -A tests.contract_sagas worker``) configures it the way every worker does: from its
``SAGA_*`` variables, on first use.

Every body appends ``<direction>:<step>`` to the list ``contract:ledger:<run id>`` in the store
the registry names (real Redis or the in-memory server alike). Payload knobs:

- ``fail_at``: a step that gives up at once (PermanentError)
- ``reject_at``: a step that raises Rejected (a business outcome: compensate, no dead letter)
- ``flaky``: {step: n} -> the step fails transiently on its first n attempts
- ``hang_at``: a step whose first attempt sleeps for a minute (a worker is killed meanwhile)
"""

from __future__ import annotations

import time
from typing import Any, cast

from saga import PermanentError, Rejected, Saga, StepContext
from saga.registry import Registry
from saga.store import Client, connect

registry = Registry()
app = registry.create_app("contract")

_clients: dict[str, Client] = {}


def client() -> Client:
    """A client of the store the registry names now (one per URL)."""
    url = registry.settings.redis_url
    if url not in _clients:
        _clients[url] = connect(url, retries=3)
    return _clients[url]


def ledger(run_id: str) -> list[str]:
    """Every execution of a body of the run, in order."""
    return cast(list[str], client().lrange(f"contract:ledger:{run_id}", 0, -1))


def _act(payload: dict[str, Any], ctx: StepContext) -> None:
    client().rpush(f"contract:ledger:{ctx.run_id}", f"{ctx.direction.value}:{ctx.step}")
    if ctx.direction.value != "forward":
        return
    if payload.get("hang_at") == ctx.step and ctx.attempt == 1:
        time.sleep(60)
    if payload.get("fail_at") == ctx.step:
        raise PermanentError(f"{ctx.step} refused")
    if payload.get("reject_at") == ctx.step:
        raise Rejected(f"{ctx.step}: insufficient funds")
    if ctx.attempt <= int(payload.get("flaky", {}).get(ctx.step, 0)):
        raise ConnectionError(f"{ctx.step} flaked on attempt {ctx.attempt}")


RETRY: dict[str, Any] = {"max_retries": 2, "retry_backoff": 0.01, "retry_backoff_max": 0.02}

order = Saga("contract_order", app=app, registry=registry)


@order.step(**RETRY)
def reserve(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"reserved": payload["sku"]}


@reserve.compensate
def release(payload: dict[str, Any], ctx: StepContext) -> None:
    _act(payload, ctx)


@order.step(**RETRY)
def charge(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"charged": payload["amount"], "charge_attempt": ctx.attempt}


@charge.compensate
def refund(payload: dict[str, Any], ctx: StepContext) -> None:
    _act(payload, ctx)


@order.step(**RETRY)
def ship(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"shipped": True}


# A parallel group: "pack" and "label" run concurrently (each its own task) between two steps.
fanout = Saga("contract_fanout", app=app, registry=registry)


@fanout.step(**RETRY)
def pick(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"picked": True}


@fanout.step(group="prepare", **RETRY)
def pack(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"packed": True}


@pack.compensate
def unpack(payload: dict[str, Any], ctx: StepContext) -> None:
    _act(payload, ctx)


@fanout.step(group="prepare", **RETRY)
def label(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"labelled": True}


@fanout.step(**RETRY)
def dispatch(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _act(payload, ctx)
    return {"dispatched": True}


# A long run: 300 steps, each returning its index (far past Python's recursion limit, had the
# in-memory tier run each step inside the one before it).
long_run = Saga("contract_long_run", app=app, registry=registry)


def _count(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"last": ctx.index, "attempts": payload.get("attempts", 0) + ctx.attempt}


for _i in range(300):
    long_run.step(name=f"s{_i}", max_retries=0)(_count)
