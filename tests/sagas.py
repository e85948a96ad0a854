"""Sagas the tests run, on their own Celery app, with an effects ledger in Redis.

Every body appends ``"<direction>:<step>"`` to the list ``ledger:<run id>`` (raw executions) and
applies its effect once per idempotency key (``effects:<run id>``), like a real payment API.
Behaviour is driven by payload flags:

- ``fail_at``: step name that raises PermanentError (with the message ``fail_message`` if given,
  e.g. text a downstream service echoed)
- ``reject_at``: step name that raises Rejected (an expected business outcome)
- ``flaky``: {step: N} -> that step raises a transient error on its first N attempts
- ``fail_compensation``: step whose compensation always raises
- ``bad_output_at``: step that returns a list instead of a JSON object
- ``hostile_output_at``: {step: "surrogate" | "deep" | "huge"} -> that step returns a lone
  surrogate, an object nested 1,000 deep, or 2 MB of text
- ``block``: {step: redis key} -> that step waits until the key exists (BLPOP), then goes on;
  ``{attempt}`` in the key is replaced by the attempt number (to release one attempt only)
- ``scribble``: a list every step appends its name to *in place*, returning nothing about it
  (a careless body: what it changes must not reach the stored payload)
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, cast

from saga import PermanentError, Rejected, Saga, StepContext, create_app, get_settings
from saga.store import Client, connect

app = create_app("tests")

_client: Client | None = None


def client() -> Client:
    """A client of the store's Redis (a cluster client when the store is a Redis Cluster)."""
    global _client
    if _client is None:
        _client = connect(get_settings().redis_url, retries=3)
    return _client


def ledger(run_id: str) -> list[str]:
    """Raw executions of a run's bodies, in order."""
    return cast(list[str], client().lrange(f"ledger:{run_id}", 0, -1))


def effects(run_id: str) -> dict[str, str]:
    """Effects applied once per idempotency key."""
    return cast(dict[str, str], client().hgetall(f"effects:{run_id}"))


def _body(payload: dict[str, Any], ctx: StepContext) -> None:
    c = client()
    c.rpush(f"ledger:{ctx.run_id}", f"{ctx.direction.value}:{ctx.step}")
    if ctx.direction.value == "forward":
        gate = payload.get("block", {}).get(ctx.step)
        if gate:  # wait up to 60 s, in short waits (the client's socket times out after 10 s)
            key = gate.replace("{attempt}", str(ctx.attempt))
            any(c.blpop([key], timeout=5) for _ in range(12))
        if payload.get("fail_at") == ctx.step:
            raise PermanentError(str(payload.get("fail_message", f"{ctx.step} refused")))
        if payload.get("reject_at") == ctx.step:
            raise Rejected("insufficient funds")
        if ctx.attempt <= int(payload.get("flaky", {}).get(ctx.step, 0)):
            raise ConnectionError(f"{ctx.step} flaked on attempt {ctx.attempt}")
    elif payload.get("fail_compensation") == ctx.step:
        raise RuntimeError(f"cannot undo {ctx.step}")
    if isinstance(payload.get("scribble"), list):
        payload["scribble"].append(ctx.step)
    c.hsetnx(f"effects:{ctx.run_id}", ctx.idempotency_key, ctx.attempt)


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


HOSTILE_OUTPUTS: dict[str, Any] = {
    "surrogate": lambda: {"file": "caf\udce9.txt"},  # a surrogateescape-decoded file name
    "deep": lambda: _deep(1000),
    "huge": lambda: {"blob": "x" * 2_000_000},
}


def make_saga(name: str, steps: list[str], compensable: set[str] | None = None, max_retries: int = 2) -> Saga:
    """A saga whose steps all run :func:`_body` and return ``{<step>: <attempt>}``."""
    saga = Saga(name, app=app)
    compensable = set(steps) if compensable is None else compensable
    for step_name in steps:

        def forward(payload: dict[str, Any], ctx: StepContext) -> Any:
            _body(payload, ctx)
            if payload.get("bad_output_at") == ctx.step:
                return ["not", "an", "object"]
            hostile = payload.get("hostile_output_at", {}).get(ctx.step)
            if hostile:
                return HOSTILE_OUTPUTS[hostile]()
            return {ctx.step: ctx.attempt}

        declared = saga.step(name=step_name, max_retries=max_retries, retry_backoff=0.01, retry_backoff_max=0.05)(
            forward
        )
        if step_name in compensable:
            declared.compensate(_body)
    return saga


trip = make_saga("trip", ["flight", "hotel", "car", "pay"], compensable={"flight", "hotel", "car"})
# "audit" has no compensation: the unwind passes over it.
gaps = make_saga("gaps", ["a", "audit", "c", "d"], compensable={"a", "c"})
single = make_saga("single", ["only"])


# "charge" acts, then may fail: compensate_on_failure has its own compensation run first.
# Payload: ``charge_returns``: "junk" (a Decimal: not JSON) or ``charge_times_out``: True.
payments = Saga("payments", app=app)


@payments.step(max_retries=1, retry_backoff=0.01, retry_backoff_max=0.02)
def reserve(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _body(payload, ctx)
    return {"reserved": True}


reserve.compensate(_body)


@payments.step(compensate_on_failure=True, max_retries=1, retry_backoff=0.01, retry_backoff_max=0.02)
def charge(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _body(payload, ctx)  # the money moves ...
    if payload.get("charge_times_out"):
        raise TimeoutError("the bank did not answer in time")  # ... though the caller never hears so
    if payload.get("charge_returns") == "junk":
        return {"amount": Decimal("10.00")}  # ... and the body returns what JSON cannot hold
    return {"charged": True}


charge.compensate(_body)


@payments.step
def ship(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    _body(payload, ctx)
    return {"shipped": True}


# Bodies written with async def are awaited on the worker.
asyncs = Saga("asyncs", app=app)


@asyncs.step(max_retries=0)
async def fetch(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    _body(payload, ctx)
    return {"fetched": ctx.attempt}


@fetch.compensate
async def unfetch(payload: dict[str, Any], ctx: StepContext) -> None:
    await asyncio.sleep(0.001)
    _body(payload, ctx)


@asyncs.step(max_retries=0)
async def keep(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    _body(payload, ctx)  # raises PermanentError for ``fail_at: keep``
    return {"kept": True}


# The fuzz test's saga: its one step returns the object FUZZ_OUTPUTS holds for the run's
# ``output`` key (in-process only: the test and the worker thread share this module).
FUZZ_OUTPUTS: dict[str, Any] = {}
fuzz = Saga("fuzz", app=app)


@fuzz.step(max_retries=0)
def emit(payload: dict[str, Any], ctx: StepContext) -> Any:
    return FUZZ_OUTPUTS.pop(str(payload.get("output")), None)


@emit.compensate
def unemit(payload: dict[str, Any], ctx: StepContext) -> None:
    return None


@fuzz.step
def after(payload: dict[str, Any], ctx: StepContext) -> None:
    return None
