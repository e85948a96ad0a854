"""The hot tier's own figures: Redis bytes per finished run, and the cost of listing failed runs.

* Bytes per run: ``INFO memory`` ``used_memory`` before and after ``runs`` runs of one saga ran
  to completion on the benchmark's saga worker (its keys kept for their retention, as in
  production), divided by ``runs``. The three sagas of issue 10's table: 5 steps with a 200 B
  payload, 5 steps with a 10 KB payload where each step adds 2 KB, 30 steps with a 200 B payload.
* Listing: ``total`` finished runs written straight through the store (one in ``failed_every``
  failed), in a Redis of their own; then ``control.list_runs(status="failed", limit=20)`` — what
  ``saga list --status failed --limit 20`` calls — timed over ``calls`` calls, with the Redis
  commands one call sends (``INFO commandstats`` deltas).
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis

from saga.control import runs as control
from saga.core import Shape, decide
from saga.registry import Registry
from saga.settings import Settings
from saga.store import CommitOptions, RedisStore
from saga.testing import RedisServer

from .measure import BenchError, command_calls

#: (label, saga name in bench.app, payload bytes)
MEMORY_CASES = (
    ("5 steps, 200 B payload", "mem5", 200),
    ("5 steps, 10 KB payload, each step adds 2 KB", "mem5big", 10_000),
    ("30 steps, 200 B payload", "mem30", 200),
)


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` of ``INFO memory``."""
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def _run_all(saga: Any, payload_bytes: int, runs: int, timeout: float) -> list[str]:
    store = saga.store
    ids = [saga.start({"blob": "x" * payload_bytes, "n": n}) for n in range(runs)]
    deadline = time.monotonic() + timeout
    while store.indexes.active_depth():
        if time.monotonic() > deadline:
            raise BenchError(f"{saga.name}: runs still unfinished after {timeout}s")
        time.sleep(0.05)
    for state in store.reads.snapshots(ids[-50:]):
        if state is None or state.status.value != "completed":
            raise BenchError(f"{saga.name}: a run ended {state.status.value if state else 'missing'}")
    return ids


def bytes_per_run(saga: Any, client: redis.Redis, payload_bytes: int, runs: int, timeout: float = 600) -> float:
    """Redis bytes each finished run of ``saga`` leaves, over ``runs`` runs (see the module),
    after ``runs // 10`` runs that warm the broker's and the store's structures up."""
    _run_all(saga, payload_bytes, max(runs // 10, 10), timeout)
    before = used_memory(client)
    _run_all(saga, payload_bytes, runs, timeout)
    return (used_memory(client) - before) / runs


def memory_figures(sagas: dict[str, Any], client: redis.Redis, runs: int) -> list[dict[str, Any]]:
    """Bytes per finished run of each case of :data:`MEMORY_CASES`."""
    rows = []
    for label, name, payload in MEMORY_CASES:
        per_run = bytes_per_run(sagas[name], client, payload, runs)
        rows.append({"saga": label, "name": name, "runs": runs, "bytes_per_run": round(per_run)})
        print(f"  {label}: {per_run:,.0f} bytes per finished run ({runs} runs)", flush=True)
    return rows


def _fill(store: RedisStore, total: int, failed_every: int) -> int:
    """Write ``total`` finished one-step runs straight through the store; returns how many failed."""
    shape = Shape(("only",), (False,))
    failed = 0
    for n in range(total):
        start = decide.decide_start(str(uuid.uuid4()), "fill", {"n": n})
        store.create(shape, start, None, check_at=time.time() + 3600)
        if n % failed_every == 0:
            moved, entry = decide.decide_fail(start.state, "only", RuntimeError("filled as failed"))
            options = CommitOptions(dead_entry=entry)
            failed += 1
        else:
            moved, options = decide.decide_step_succeeded(start.state, shape, 0, None), CommitOptions()
        store.commit(start.state, moved, options, check_at=None)
    return failed


def listing_figures(total: int, calls: int = 20) -> dict[str, Any]:
    """The cost of ``saga list --status failed --limit 20`` over ``total`` runs, 100 of them
    failed (0.1 % of 100,000; see the module)."""
    failed_every = max(total // 100, 1)
    with RedisServer() as server:
        settings = Settings(redis_url=server.url, metrics_port=0)
        store = RedisStore(server.url)
        began = time.monotonic()
        failed = _fill(store, total, failed_every)
        filled = time.monotonic() - began
        registry = Registry(settings)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        control.list_runs(status="failed", limit=20, registry=registry)  # connect, check the layout
        before = command_calls(client)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            runs = control.list_runs(status="failed", limit=20, registry=registry)
            times.append((time.perf_counter() - t0) * 1000)
        after = command_calls(client)
        client.close()
    if len(runs) != 20:
        raise BenchError(f"listing returned {len(runs)} failed runs, not 20")
    sent = {k: (after[k] - before.get(k, 0)) / calls for k in after if k != "info" and after[k] != before.get(k, 0)}
    return {
        "runs": total,
        "failed": failed,
        "fill_seconds": round(filled, 1),
        "commands_per_call": round(sum(sent.values()), 1),
        "commands_by_name": {k: round(v, 1) for k, v in sorted(sent.items(), key=lambda kv: -kv[1])},
        "p50_ms": round(statistics.median(times), 2),
        "max_ms": round(max(times), 2),
        "calls": calls,
    }
