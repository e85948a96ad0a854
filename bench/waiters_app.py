"""The Celery app of the push-based waiting figures (:mod:`bench.waiters`).

``saga_app``: the saga defaults (:func:`saga.create_app`), broker and store at ``SAGA_REDIS_URL``;
it runs ``gated1``, a saga of one step that holds its run at a gate: the step pushes the run id
onto :func:`reached_key` (the benchmark knows the step is running), then blocks on
:func:`gate_key` until the benchmark pushes to it, and returns. The commit of that step makes the
run ``completed``: the terminal commit whose notification a waiter is woken by.

Worker: ``celery -A bench.waiters_app:saga_app worker --pool=prefork -c 2``. The benchmark's
idle figures start ``gated1`` runs with no worker at all: they stay pending.
"""

from __future__ import annotations

from typing import Any

import redis

from saga import Saga, StepContext, create_app, get_settings

#: Seconds the step waits at its gate before it gives up (and fails the step).
GATE_TIMEOUT = 60

saga_app = create_app("bench-waiters")

gated1 = Saga("gated1", app=saga_app)

_client: redis.Redis | None = None


def gate_key(run_id: str) -> str:
    """The list the benchmark pushes to, to let run ``run_id``'s step return."""
    return f"bench:gate:{run_id}"


def reached_key(run_id: str) -> str:
    """The list the step pushes to once it runs (before it waits at its gate)."""
    return f"bench:reached:{run_id}"


def _redis() -> redis.Redis:
    """A client of the store's Redis, one per worker process (made after the fork)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(get_settings().redis_url, socket_timeout=GATE_TIMEOUT + 10)
    return _client


@gated1.step
def hold(payload: dict[str, Any], ctx: StepContext) -> None:
    """Tell the benchmark the step runs, then wait until it opens the gate."""
    client = _redis()
    client.rpush(reached_key(ctx.run_id), ctx.attempt)
    if client.blpop([gate_key(ctx.run_id)], timeout=GATE_TIMEOUT) is None:
        raise TimeoutError(f"gate of run {ctx.run_id} not opened within {GATE_TIMEOUT} s")
    return None
