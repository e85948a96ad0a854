"""The Celery app of the parallel-group, deadline and timeout tests, run by real prefork worker
processes (``celery -A tests.trips worker``) and by the test process, which starts runs.

Every body acts on an effects ledger in the store's Redis, like a payment API: an effect is
applied once per idempotency key (``fx:<run>``, the order of first applications in
``fxorder:<run>``), every raw execution counted (``raw:<run>``). Payload knobs:

- ``fail_at``: a step that gives up at once (PermanentError), before its effect
- ``gate``: {step: key} -> the step waits (after its effect) until the key exists, so a test
  can hold it in flight; ``{attempt}`` in the key is replaced by the attempt number
- ``hang``: {step: seconds} -> the step sleeps that long before its effect
- ``fail_times``: {step: n} -> the step fails transiently on its first n attempts
- ``overlap``: True -> flight and hotel both return the key ``ref``
"""

from __future__ import annotations

import time
from typing import Any, cast

from saga import PermanentError, Saga, StepContext, create_app, get_settings
from saga.store import Client, connect
from tests.helpers import apply_once

app = create_app("trips")

_client: Client | None = None


def client() -> Client:
    """A client of the store's Redis (the ledger lives there)."""
    global _client
    if _client is None:
        _client = connect(get_settings().redis_url, retries=3)
    return _client


def use_ledger(url: str) -> None:
    """Keep the ledger in the Redis at ``url`` (the test process, before its first read)."""
    global _client
    _client = connect(url, retries=3)


def effects(run_id: str) -> list[str]:
    """Effects applied, in order of first application: ``forward:<step>``, ``compensation:<step>``."""
    return cast(list[str], client().lrange(f"{{fx}}:order:{run_id}", 0, -1))


def raw(run_id: str) -> dict[str, int]:
    """Raw executions of each body."""
    return {k: int(v) for k, v in cast(dict[str, str], client().hgetall(f"{{fx}}:raw:{run_id}")).items()}


def _act(payload: dict[str, Any], ctx: StepContext) -> None:
    c = client()
    what = f"{ctx.direction.value}:{ctx.step}"
    c.hincrby(f"{{fx}}:raw:{ctx.run_id}", what, 1)
    forward = ctx.direction.value == "forward"
    if forward and payload.get("fail_at") == ctx.step:
        raise PermanentError(f"{ctx.step} refused")
    if forward and ctx.attempt <= int(payload.get("fail_times", {}).get(ctx.step, 0)):
        raise ConnectionError(f"{ctx.step} failed on attempt {ctx.attempt}")
    if forward and ctx.step in payload.get("hang", {}):
        time.sleep(float(payload["hang"][ctx.step]))
    apply_once(c, f"{{fx}}:{ctx.run_id}", f"{{fx}}:order:{ctx.run_id}", ctx.idempotency_key, what)
    gate = payload.get("gate", {}).get(ctx.step) if forward else None
    if gate:  # wait up to 60 s in short waits (the client's socket times out after 10 s)
        key = str(gate).replace("{attempt}", str(ctx.attempt))
        any(c.blpop([key], timeout=5) for _ in range(12))


def _step(saga: Saga, name: str, *, group: str | None = None, undo: bool = True, **options: Any) -> None:
    def forward(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        _act(payload, ctx)
        if payload.get("overlap") and ctx.step in ("flight", "hotel"):
            return {"ref": ctx.step}
        return {f"{ctx.step}_ref": f"{ctx.step}-{ctx.run_id[:8]}"}

    options.setdefault("retry_backoff", 0.05)
    options.setdefault("retry_backoff_max", 0.2)
    declared = saga.step(name=name, group=group, **options)(forward)
    if undo:
        declared.compensate(_act)


#: quote -> [flight | hotel | car] -> pay: a trip booked in parallel.
trip = Saga("grouptrip", app=app)
_step(trip, "quote")
for _member in ("flight", "hotel", "car"):
    _step(trip, _member, group="book", max_retries=1)
_step(trip, "pay", undo=False)

#: reserve -> slow -> finish: the deadline tests hold ``slow`` (a gate, a hang, or retries).
timed = Saga("timed", app=app, deadline=600)
_step(timed, "reserve")
_step(timed, "slow", max_retries=50, retry_backoff=5.0, retry_backoff_max=5.0)
_step(timed, "finish")

#: hold -> stuck: ``stuck`` may run 1 s per attempt (the timeout test makes it hang).
limited = Saga("limited", app=app)
_step(limited, "hold")
_step(limited, "stuck", timeout=1, max_retries=1)
