"""The chaos suite's Celery app: a 5-step saga (version 1; version 2 adds a sixth step, audit)
and a grouped saga (``open -> [flight | hotel | car] -> charge -> confirm``), whose steps act on
one effects ledger in Redis. A worker declares the versions of the 5-step saga ``CHAOS_VERSIONS``
names ("1" unless set; "2" is a deploy that dropped version 1, "1,2" one that kept it), and the
grouped saga always.

Like a real payment API, the ledger applies an effect once per idempotency key (``fx:<run>``,
with the order of first applications in ``fxorder:<run>``) and counts every raw execution
(``raw:<run>``). Payload: ``permanent_at`` (a step that refuses for good), ``p_transient``
(chance that an attempt fails before its effect), ``max_sleep`` (seconds a step may take, after
its effect, so a kill can land between effect and commit), ``hold`` ({step: seconds} the step
sleeps after its effect, so a run with a shorter deadline expires with it in flight).

A third saga, ``backlog`` (``flaky -> after``, no ledger), is the backlog case: a worker with one
slot and runs whose first step fails on its first attempt and heals on its second, each body
taking ``BACKLOG_BODY`` seconds, so retries wait behind the queue.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable
from typing import Any

import redis

from saga import PermanentError, Saga, StepContext, create_app, get_settings
from saga.registry import Registry
from tests.helpers import apply_once

#: The steps of each version; every step but settle and audit can be undone.
STEPS = {
    1: ("debit", "reserve", "allocate", "notify", "settle"),
    2: ("debit", "reserve", "allocate", "notify", "settle", "audit"),
}
UNDOABLE = frozenset({"debit", "reserve", "allocate", "notify"})

#: The grouped saga's stages, in order: the members of a group run at once.
GROUP_STAGES: tuple[tuple[str, ...], ...] = (("open",), ("flight", "hotel", "car"), ("charge",), ("confirm",))
GROUP_UNDOABLE = frozenset({"open", "flight", "hotel", "car", "charge"})

_client: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            os.environ.get("CHAOS_LEDGER_URL") or get_settings().redis_url,
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
    apply_once(c, f"fx:{ctx.run_id}", f"fxorder:{ctx.run_id}", ctx.idempotency_key, what)
    time.sleep(random.uniform(0, float(payload.get("max_sleep", 0))))
    if ctx.direction.value == "forward" and ctx.step in payload.get("hold", {}):
        time.sleep(float(payload["hold"][ctx.step]))


def declare(versions: Iterable[int], *, app: Any, registry: Registry | None = None) -> dict[int, Saga]:
    """The chaos saga in each of ``versions`` on ``app``."""
    sagas: dict[int, Saga] = {}
    for version in versions:
        saga = Saga("chaos", app=app, version=version, registry=registry)
        for name in STEPS[version]:
            _declare(saga, name, undo=name in UNDOABLE)
        sagas[version] = saga
    return sagas


def declare_grouped(*, app: Any, registry: Registry | None = None) -> Saga:
    """The grouped saga on ``app``: ``open``, then ``flight``, ``hotel`` and ``car`` at once, then
    ``charge`` and ``confirm``."""
    saga = Saga("chaosgroup", app=app, registry=registry)
    for stage in GROUP_STAGES:
        for name in stage:
            _declare(saga, name, group="book" if len(stage) > 1 else None, undo=name in GROUP_UNDOABLE)
    return saga


def _declare(saga: Saga, name: str, *, undo: bool, group: str | None = None) -> None:
    def forward(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        act(payload, ctx)
        return {name: ctx.attempt}

    step = saga.step(name=name, group=group, max_retries=6, retry_backoff=0.05, retry_backoff_max=0.5)(forward)
    if undo:
        step.compensate(act)


#: How long each body of the backlog saga takes.
BACKLOG_BODY = 0.1


class Hiccup(Exception):
    """The backlog saga's first step failing once (an ordinary exception: retried)."""


def declare_backlog(*, app: Any, registry: Registry | None = None) -> Saga:
    """The backlog saga on ``app``: ``flaky`` fails its first attempt and succeeds on its second;
    ``after`` succeeds; each sleeps :data:`BACKLOG_BODY` first."""
    saga = Saga("backlog", app=app, registry=registry)

    @saga.step(name="flaky", max_retries=3, retry_backoff=0.05, retry_backoff_max=0.05)
    def flaky(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        time.sleep(BACKLOG_BODY)
        if ctx.attempt == 1:
            raise Hiccup(f"{ctx.run_id} hiccup on attempt 1")
        return {"flaky": ctx.attempt}

    @saga.step(name="after")
    def after(payload: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        time.sleep(BACKLOG_BODY)
        return {"after": ctx.attempt}

    return saga


app = create_app("chaos")
declared = declare([int(v) for v in os.environ.get("CHAOS_VERSIONS", "1").split(",") if v], app=app)
chaos = declared[min(declared)]
grouped = declare_grouped(app=app)
backlog = declare_backlog(app=app)
