"""The Celery apps both benchmark workers import.

* ``saga_app``: the saga defaults (:func:`saga.create_app`), broker and store at ``SAGA_REDIS_URL``;
  it runs ``noop5`` (5 no-op steps), ``recover5`` (step 3 sleeps on its first attempt when the
  payload asks, so that a worker can be killed in the middle of it) and the memory sagas
  ``mem5``, ``mem5big``, ``mem30`` (bytes per finished run).
* ``chain_app``: the same broker and worker settings (JSON, late acks, prefetch 1) plus what a
  plain Celery user has by default: a Redis result backend, results stored. Broker and backend
  are ``BENCH_CHAIN_REDIS_URL`` (a Redis of its own, so the two variants' command counts never
  mix); the store's Redis when unset.

Workers: ``celery -A bench.app:saga_app worker --pool=prefork -c 2`` and the same with
``bench.app:chain_app``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from saga import Saga, StepContext, create_app, get_settings

#: Names the Redis of the chain variant (not a ``SAGA_*`` setting: the saga library never reads it).
CHAIN_URL_ENV = "BENCH_CHAIN_REDIS_URL"

saga_app = create_app("bench-saga")

_chain_url = os.environ.get(CHAIN_URL_ENV) or get_settings().redis_url
chain_app = create_app(
    "bench-chain",
    broker_url=_chain_url,
    result_backend=_chain_url,
    task_ignore_result=False,
)

# --- (A) the saga -----------------------------------------------------------------------------

noop5 = Saga("noop5", app=saga_app)


@noop5.step
def s1(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 1."""
    return None


@noop5.step
def s2(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 2."""
    return None


@noop5.step
def s3(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 3."""
    return None


@noop5.step
def s4(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 4."""
    return None


@noop5.step
def s5(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 5."""
    return None


# --- the recovery saga: step 3 sleeps ``payload["sleep"]`` seconds on its first attempt only --

recover5 = Saga("recover5", app=saga_app)


@recover5.step
def r1(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 1."""
    return None


@recover5.step
def r2(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 2."""
    return None


@recover5.step
def r3(payload: dict[str, Any], ctx: StepContext) -> None:
    """Sleeps ``payload['sleep']`` seconds on attempt 1 (the worker is killed meanwhile); a
    resumed attempt returns at once."""
    if ctx.attempt == 1:
        time.sleep(float(payload.get("sleep", 0)))
    return None


@recover5.step
def r4(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 4."""
    return None


@recover5.step
def r5(payload: dict[str, Any], ctx: StepContext) -> None:
    """No-op step 5."""
    return None


# --- the memory sagas: bytes per finished run (bench.hot_tier) ---------------------------------


def _memory_saga(name: str, steps: int, adds: int) -> Saga:
    """A saga of ``steps`` steps; each returns ``adds`` bytes of new payload (nothing when 0)."""
    saga = Saga(name, app=saga_app)
    for i in range(steps):

        def body(payload: dict[str, Any], ctx: StepContext, key: str = f"add{i}") -> dict[str, Any] | None:
            return {key: "y" * adds} if adds else None

        saga.step(name=f"m{i}")(body)
    return saga


mem5 = _memory_saga("mem5", 5, 0)
mem5big = _memory_saga("mem5big", 5, 2000)
mem30 = _memory_saga("mem30", 30, 0)
MEMORY_SAGAS = {"mem5": mem5, "mem5big": mem5big, "mem30": mem30}


# --- (B) the plain Celery chain: the same 5 no-op tasks ----------------------------------------


def noop() -> None:
    """The body of each chain task: nothing."""
    return None


#: The chain's 5 no-op tasks, ``bench.chain.t1`` .. ``bench.chain.t5``.
CHAIN_TASKS: tuple[Any, ...] = tuple(chain_app.task(name=f"bench.chain.t{i}")(noop) for i in range(1, 6))
