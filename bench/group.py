"""A 5-step saga with a 3-member parallel group against a Celery chord of the same shape:
``make bench`` takes these figures after the hot tier's (``--skip-group`` leaves them out), and
``python -m bench.group`` takes them alone (writing ``bench/results/group*.json``).

(A) ``grouped5`` (:mod:`bench.group_app`): step ``a``, then ``b``, ``c``, ``d`` as the group
``fan`` (each its own task, run concurrently), then ``e`` once every member committed; no result
backend. (B) ``chain(a.si(), chord([b.si(), c.si(), d.si()], e.si())).apply_async()``, with a
Redis result backend on the chord's broker Redis (a chord needs one). The members return the
same small dicts in both. Each variant has a redis-server and a prefork worker (concurrency 2)
of its own, and is measured with :mod:`bench.measure` as the main table's saga and chain: a
warm-up, throughput repetitions interleaved A B A B (runs fired at once, median of the
repetitions' runs/s), then single-run latency over sequential runs (to the completion event,
and through ``Saga.wait()`` / ``AsyncResult.get()``). One difference: the saga's throughput wait
also ends when the runs left in the ``active`` index have all finished (:class:`GroupSagaVariant`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from saga.registry import default_registry
from saga.settings import Settings
from saga.store import BucketKeys
from saga.testing import RedisServer, configured

from .measure import (
    CONCURRENCY,
    GET_SLICE,
    RESULTS,
    WARMUP_RUNS,
    BenchError,
    ChainVariant,
    Rep,
    SagaVariant,
    Variant,
    enable_notifications,
    latency_pair,
    print_rep,
    run_section,
    section_env,
    summarize_latency,
    summarize_reps,
    throughput_rep,
)
from .procs import Worker
from .report import group_table

#: Where the chord's Redis URL reaches :mod:`bench.group_app`, which reads it on import (its
#: ``CHORD_URL_ENV``; not imported from there, which would make its apps before the URL is set).
CHORD_URL_ENV = "BENCH_CHORD_REDIS_URL"
SHAPE = "a, then b c d concurrently, then e"
#: :meth:`GroupSagaVariant.wait_all` reads what is left in the ``active`` index once it holds at
#: most this many runs, or has not shrunk for :data:`STUCK_S` seconds.
LEFT_CHECK_DEPTH = 20
STUCK_S = 0.2
FINISHED = ("completed", "compensated", "failed")


class GroupSagaVariant(SagaVariant):
    """(A) :class:`SagaVariant` (``grouped5.start`` per run), whose wait also ends when every run
    left in the store's ``active`` index has finished.

    The watchdog looks at a run past its progress deadline and, when it judges the run's next
    step merely queued, puts it back in the ``active`` index (an unconditional ZADD at the run's
    last commit + ``dispatch_timeout``). If the run completes between the watchdog's read and
    that ZADD, the commit's ZREM comes first: the finished run stays in the index until the
    watchdog looks again, up to ``dispatch_timeout`` (30 s) later, and the plain wait, which
    polls the index until it is empty, waits for that. A group queues three tasks per run at
    once, so with 500 runs fired at once the last step often waits in the queue past the run's
    check deadline (lease + margin after the group's commit), and the race was hit in about a
    third of such repetitions here (not in 5 of ``noop5``). So once the index is nearly empty
    (or stuck), the wait reads the ids left in it (ZRANGE of each bucket) and their status
    (HGET), and ends when they are all finished; ``stale`` counts such entries.
    """

    def __init__(self, url: str, worker: Worker, saga: Any) -> None:
        super().__init__(url, worker, saga)
        #: Finished runs found left in the ``active`` index when a wait ended (each counted once).
        self.stale = 0
        self._stale_ids: set[str] = set()

    def _left_finished(self) -> tuple[list[str] | None, int]:
        """The runs the ``active`` index holds if every one has finished (else None), and how
        many HGETs that took."""
        store = self.saga.store
        pipe = store.keyspace.client.pipeline(transaction=False)
        for b in range(store.keyspace.buckets):
            pipe.zrange(BucketKeys.of(store.keyspace.prefix, b).active, 0, -1)
        left = [run_id for ids in pipe.execute() for run_id in ids]
        pipe = store.keyspace.client.pipeline(transaction=False)
        for run_id in left:
            pipe.hget(store.keyspace.keys(run_id).meta, "status")
        statuses = pipe.execute() if left else []
        return (left if all(status in FINISHED for status in statuses) else None), len(left)

    def wait_all(self, handles: list[Any], timeout: float) -> dict[str, int]:
        """Poll the number of unfinished runs (``ZCARD`` of each bucket's ``active`` index, in one
        pipeline) every 10 ms until it is 0, or until every run left in it has finished (see the
        class); the benchmark's own commands: the ZCARDs, ZRANGEs and HGETs."""
        store = self.saga.store
        deadline = time.monotonic() + timeout
        polls = checks = reads = 0
        last_depth, since = -1, time.monotonic()
        while True:
            polls += 1
            depth = store.indexes.active_depth()
            if depth == 0:
                break
            now = time.monotonic()
            if depth != last_depth:
                last_depth, since = depth, now
            if depth <= LEFT_CHECK_DEPTH or now - since >= STUCK_S:
                checks += 1
                left, read = self._left_finished()
                reads += read
                if left is not None:
                    self.stale += len(set(left) - self._stale_ids)
                    self._stale_ids.update(left)
                    break
                since = now
            if now > deadline:
                raise BenchError(f"saga runs still unfinished after {timeout}s")
            time.sleep(0.01)
        own = {"zcard": polls * store.keyspace.buckets, "zrange": checks * store.keyspace.buckets, "hget": reads}
        return {cmd: n for cmd, n in own.items() if n}


class ChordVariant(ChainVariant):
    """(B) ``chain(a.si(), chord([b.si(), c.si(), d.si()], e.si())).apply_async()`` per run; the
    handle is the chord body's (``e``'s) AsyncResult, so completion, waiting and the check are
    :class:`ChainVariant`'s."""

    name = "chord"

    def _chain(self) -> Any:
        from celery import chain, chord

        first, *members, last = self.tasks
        return chain(first.si(), chord([m.si() for m in members], last.si())).apply_async()


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def group_figures(
    base_env: Mapping[str, str],
    *,
    runs: int,
    reps: int,
    latency_runs: int,
    concurrency: int = CONCURRENCY,
    logs: Path = RESULTS,
) -> dict[str, Any]:
    """Every figure of the module, as the ``group`` section of the results. ``base_env``: the
    workers' environment (``SAGA_*`` settings but the Redis URLs, which are this part's own)."""
    began = time.monotonic()
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers: dict[str, RedisServer] = {}
        for name in ("saga", "chord"):
            server = RedisServer()
            stack.callback(server.close)
            servers[name] = server.start()
        env = {
            **base_env,
            "SAGA_REDIS_URL": servers["saga"].url,
            "SAGA_BROKER_URL": servers["saga"].url,
            "SAGA_METRICS_PORT": "0",
            CHORD_URL_ENV: servers["chord"].url,
        }
        os.environ[CHORD_URL_ENV] = servers["chord"].url
        app = importlib.import_module("bench.group_app")
        if app.chord_app.conf.broker_url != servers["chord"].url:
            raise BenchError("bench.group_app was imported before its chord Redis existed")
        settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("SAGA_")})
        stack.enter_context(configured(default_registry(), settings, app.saga_app))
        workers: dict[str, Worker] = {}
        for name in ("saga", "chord"):
            log = logs / f"group-{name}-worker.log"
            log.write_bytes(b"")
            worker = Worker(f"bench.group_app:{name}_app", env, log, concurrency=concurrency)
            stack.callback(worker.stop)
            workers[name] = worker.start()
        sv = GroupSagaVariant(servers["saga"].url, workers["saga"], app.grouped5)
        cv = ChordVariant(servers["chord"].url, workers["chord"], tuple(app.CHORD_TASKS.values()))
        variants: list[Variant] = [sv, cv]
        for v in variants:
            stack.callback(v.close)

        print("  warming up (workers starting)...", flush=True)
        for v in variants:
            throughput_rep(v, WARMUP_RUNS, timeout=120)
        timeout = max(60.0, runs * 0.12)
        measured: dict[str, list[Rep]] = {"saga": [], "chord": []}
        stale: list[int] = []
        print(f"  throughput ({runs} runs at once per repetition, A B A B ...):", flush=True)
        for i in range(1, reps + 1):
            for v in variants:
                before = sv.stale
                rep = throughput_rep(v, runs, timeout)
                measured[v.name].append(rep)
                print_rep(i, reps, rep)
                if v is sv:
                    stale.append(sv.stale - before)
                    if stale[-1]:
                        print(f"    {stale[-1]} finished run(s) left in the active index by the watchdog", flush=True)

        print(
            f"  latency ({latency_runs} sequential runs each, to the completion event and via the API)...", flush=True
        )
        samples: dict[str, tuple[list[float], list[float]]] = {"saga": ([], []), "chord": ([], [])}
        enable_notifications(variants, True)
        try:
            for _ in range(latency_runs):
                for v in variants:
                    event_ms, api_ms = latency_pair(v)
                    samples[v.name][0].append(event_ms)
                    samples[v.name][1].append(api_ms)
        finally:
            enable_notifications(variants, False)

        section: dict[str, Any] = {
            "shape": SHAPE,
            "runs": runs,
            "reps": reps,
            "latency_runs": latency_runs,
            "concurrency": concurrency,
            "lease_seconds": settings.lease_seconds,
            "warmup_runs": WARMUP_RUNS,
            "get_slice_s": GET_SLICE,
        }
        for v in variants:
            section[v.name] = {
                **summarize_reps(measured[v.name]),
                "latency": summarize_latency(samples[v.name][0]),
                "latency_api": summarize_latency(samples[v.name][1]),
                "missed_result_notifications": v.missed,
                "latency_samples_ms": [round(x, 3) for x in samples[v.name][0]],
            }
        section["saga"]["stale_active_entries_per_rep"] = stale
    s, c = section["saga"], section["chord"]
    section["ratios"] = {
        "throughput": _ratio(s["runs_per_s"], c["runs_per_s"]),
        "latency_p50": _ratio(s["latency"]["p50_ms"], c["latency"]["p50_ms"]),
        "latency_p95": _ratio(s["latency"]["p95_ms"], c["latency"]["p95_ms"]),
        "latency_api_p50": _ratio(s["latency_api"]["p50_ms"], c["latency_api"]["p50_ms"]),
        "commands_per_step": _ratio(s["commands_per_step"], c["commands_per_step"]),
        "worker_cpu_per_run": _ratio(s["cpu_ms_per_run"]["worker"], c["cpu_ms_per_run"]["worker"]),
        "redis_cpu_per_run": _ratio(s["cpu_ms_per_run"]["redis"], c["cpu_ms_per_run"]["redis"]),
    }
    section["seconds"] = round(time.monotonic() - began, 1)
    return section


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.group``: the parallel group's figures alone (a table, and a JSON file)."""

    p = argparse.ArgumentParser(prog="python -m bench.group", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, help="runs per throughput repetition (default 500; quick 30)")
    p.add_argument("--reps", type=int, help="throughput repetitions per variant (default 3; quick 2)")
    p.add_argument("--latency-runs", type=int, help="sequential runs timed per variant (default 100; quick 10)")
    p.add_argument("--lease", type=float, default=2.0, help="SAGA_LEASE_SECONDS of the saga (default 2)")
    p.add_argument("--quick", action="store_true", help="small counts (writes bench/results/group-quick.json)")
    p.add_argument("--json", type=Path, help="where to write the figures (default bench/results/group.json)")
    args = p.parse_args(argv)
    runs = args.runs or (30 if args.quick else 500)
    reps = args.reps or (2 if args.quick else 3)
    latency_runs = args.latency_runs or (10 if args.quick else 100)
    if min(runs, reps, latency_runs) < 1 or args.lease <= 0:
        p.error("counts and the lease must be positive")
    out = args.json or RESULTS / ("group-quick.json" if args.quick else "group.json")
    base = section_env(args.lease)
    print(
        f"parallel group benchmark: {reps} x {runs} runs per variant, {latency_runs} latency runs; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return run_section(
        out,
        lambda: {"group": group_figures(base, runs=runs, reps=reps, latency_runs=latency_runs)},
        group_table,
        RESULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
