"""The chaos suite's Celery app: a 5-step saga whose steps act on an effects ledger in Redis.

Like a real payment API, the ledger applies an effect once per idempotency key (``fx:<run>``,
with the order of first applications in ``fxorder:<run>``) and counts every raw execution
(``raw:<run>``). Payload: ``permanent_at`` (a step that refuses for good), ``p_transient``
(chance that an attempt fails before its effect), ``max_sleep`` (seconds a step may take, after
its effect, so a kill can land between effect and commit).
"""

from __future__ import annotations

import random
import time
from typing import Any

import redis

from saga import PermanentError, Saga, StepContext, create_app, get_settings

app = create_app("chaos")
chaos = Saga("chaos", app=app)
STEPS = ("debit", "reserve", "allocate", "notify", "settle")

_client: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            get_settings().redis_url,
            decode_responses=True,
            retry_on_error=[redis.ConnectionError],
            socket_connect_timeout=2,
        )
    return _client


class Flaky(Exception):
    """A transient failure."""


def act(payload: dict[str, Any], ctx: StepContext) -> None:
    c = ledger()
    what = f"{ctx.direction.value}:{ctx.step}"
    c.hincrby(f"raw:{ctx.run_id}", what, 1)
    if ctx.direction.value == "forward":
        if payload.get("permanent_at") == ctx.step:
            raise PermanentError(f"{ctx.step} refused for good")
        if random.random() < float(payload.get("p_transient", 0)):
            raise Flaky(f"{ctx.step} flaked")
    if c.hsetnx(f"fx:{ctx.run_id}", ctx.idempotency_key, what):
        c.rpush(f"fxorder:{ctx.run_id}", what)
    time.sleep(random.uniform(0, float(payload.get("max_sleep", 0))))


def _declare(name: str, compensable: bool) -> None:
    def forward(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        act(payload, ctx)
        return {name: ctx.attempt}

    step = chaos.step(name=name, max_retries=6, retry_backoff=0.05, retry_backoff_max=0.5)(forward)
    if compensable:
        step.compensate(act)


for index, step_name in enumerate(STEPS):
    _declare(step_name, compensable=index < len(STEPS) - 1)
