"""Push-based waiting (issue 13): what idle waiters cost Redis, and how soon a waiter returns
once its run's terminal commit is made. ``make bench`` takes these figures after the parallel
group's (``--skip-waiters`` leaves them out); ``python -m bench.waiters`` takes them alone
(writing ``bench/results/waiters*.json``).

* Idle cost: a redis-server with no worker at all; ``waiters`` runs of ``gated1``
  (:mod:`bench.waiters_app`) started, so they stay pending, and one waiter per run, all at once:
  ``wait_async()`` as asyncio tasks on one event loop, ``wait()`` in threads, and, for the figure
  before push-based waiting, :func:`poll_wait` (the polling loop ``Saga.wait`` was: a read after
  2 ms, the delay growing x1.5 to 250 ms) in threads. Once every waiter has made its first read
  (and ``settle`` seconds more), the Redis commands of a ``window``-second window
  (``INFO commandstats`` deltas, the ``INFO`` calls themselves left out) give commands/s. By
  default the window is :data:`saga.notify.FALLBACK_POLL` long, so it holds exactly one of the
  waiters' fallback reads each (the first read of each waiter is before the window, the second
  within it, the third after it): the steady rate, not a quiet stretch between fallback
  rounds. The polling loop's window is at most :data:`POLL_WINDOW` s (it is steady after 1 s).
  Then every run is cancelled (nothing committed: the cancel commits ``compensated`` at once) and
  every waiter must return, with that state. A waiter that raises instead (e.g. its read refused
  by a full connection pool) is counted, with what it raised, and its target is missed; the
  polling loop alone retries such a read (see :func:`poll_wait`). Modes interleaved, ``reps``
  repetitions.
* Latency: a prefork worker (concurrency 2) on a redis-server of its own; per sample one run of
  ``gated1`` and one waiter blocked on it; once the step runs (it says so) and ``hold`` seconds
  more, the benchmark opens the step's gate; the step returns and the worker's commit makes the
  run ``completed``. Latency: ``time.time()`` as soon as the waiter's call returns, minus the
  ``at`` of the run's ``saga.completed`` event (stamped by the worker as it builds the commit,
  just before its script runs; same machine, same clock). ``wait()`` in a thread,
  ``wait_async()`` on an event loop, and the old polling loop; modes interleaved,
  ``reps`` repetitions of ``samples`` samples each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from saga.control import runs as control
from saga.core import SagaState, Status, parse_iso
from saga.errors import SagaTimeout, StoreUnavailable
from saga.registry import default_registry
from saga.settings import Settings
from saga.store import FALLBACK_POLL
from saga.testing import RedisServer, configured

from .measure import (
    CONCURRENCY,
    RESULTS,
    BenchError,
    command_calls,
    own_cpu,
    percentile,
    plain_client,
    redis_cpu,
    run_section,
    section_env,
    summarize_latency,
)
from .procs import Worker
from .report import IDLE_WAITERS, waiters_table

#: The idle waiters, in the order they are measured: key -> what waits.
IDLE_MODES = {
    "wait_async": "`wait_async()`, asyncio tasks on one event loop",
    "wait": "`wait()`, one thread each",
    "poll": "the old polling `wait()` (2 ms, x1.5 up to 250 ms), one thread each",
}
#: The waiters timed from the terminal commit, in the order they are measured.
LATENCY_MODES = {
    "wait": "`wait()` in a thread",
    "wait_async": "`wait_async()` on an event loop",
    "poll": "the old polling `wait()` in a thread",
}
#: Seconds after every waiter's first read before the window opens.
SETTLE_S = 2.0
#: The polling loop's window is at most this many seconds (its rate is steady after about 1 s).
POLL_WINDOW = 10.0
#: What redis-py says when a read finds every connection of its client's pool in use (100 by
#: default since redis-py 8); the read sent no command.
POOL_FULL = "Too many connections"
#: Seconds a waiter waits for its first read, and for every waiter to return after the cancels.
READY_LIMIT_S = 120.0
#: Seconds the gate stays shut after the step said it runs (every waiter is blocked by then).
HOLD_S = 0.02
#: Untimed samples per latency mode before the repetitions (worker start-up, subscriptions).
WARMUP_SAMPLES = 5


class PoolRefusals:
    """Reads of :func:`poll_wait` that redis-py's pool refused (no connection free, no command
    sent), retried; counted across threads."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        """Count one refused read."""
        with self._lock:
            self.count += 1


def poll_wait(
    saga: Any, run_id: str, timeout: float = 30.0, poll: float = 0.002, refusals: PoolRefusals | None = None
) -> SagaState:
    """``Saga.wait`` before push-based waiting (``saga/definition.py`` at commit fa16c1d), reading
    through ``saga.get``: read the run, and while it is unfinished sleep ``poll`` seconds, each
    sleep 1.5x the last, up to 250 ms.

    One change, with ``refusals``: a read the client's connection pool refuses (every connection
    in use: :data:`POOL_FULL`, no command sent) is counted and taken as an unfinished run, where
    the old loop raised; with 1,000 threads started at once most of them would raise on their
    first read, and the figure would be the cost of the few left, not of 1,000 waiters."""
    deadline = time.monotonic() + timeout
    delay = poll
    while True:
        try:
            state: SagaState | None = saga.get(run_id)
        except StoreUnavailable as exc:
            if refusals is None or POOL_FULL not in str(exc):
                raise
            refusals.add()
            state = None
        if state is not None and state.status.terminal:
            return state
        if time.monotonic() >= deadline:
            where = f"still {state.status.value} at step {state.current_step}" if state else "unread"
            raise SagaTimeout(f"run {run_id} {where} after {timeout}s")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 0.25)


@contextlib.contextmanager
def _quiet(name: str = "saga") -> Iterator[None]:
    """The library's warnings off inside the block (a cancel logs a line per run)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _calls(client: redis.Redis) -> dict[str, int]:
    """``INFO commandstats`` calls per command, without the ``INFO`` calls themselves."""
    return {cmd: n for cmd, n in command_calls(client).items() if cmd != "info"}


def _spread(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min and max of one figure over the repetitions."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "reps": [round(v, digits) for v in values],
    }


# --- idle waiters -------------------------------------------------------------------------------


class WaiterGroup:
    """One waiter per run: threads calling ``Saga.wait`` or :func:`poll_wait`, or asyncio tasks
    calling ``wait_async`` on one event loop (run in a thread of its own). A waiter that raises
    ends; what it raised is its result."""

    def __init__(self, saga: Any, ids: Sequence[str], mode: str, timeout: float) -> None:
        self.saga, self.ids, self.mode, self.timeout = saga, list(ids), mode, timeout
        self.results: list[Any] = [None] * len(ids)
        self.returned_at = [0.0] * len(ids)
        self.threads: list[threading.Thread] = []
        self.refusals = PoolRefusals()

    def start(self) -> None:
        """Start every waiter, at once."""
        if self.mode == "wait_async":
            self.threads = [threading.Thread(target=asyncio.run, args=(self._loop(),), name="bench-loop", daemon=True)]
        else:
            self.threads = [
                threading.Thread(target=self._one, args=(i, run_id), name="bench-waiter", daemon=True)
                for i, run_id in enumerate(self.ids)
            ]
        for thread in self.threads:
            thread.start()

    def _one(self, i: int, run_id: str) -> None:
        try:
            if self.mode == "poll":
                self.results[i] = poll_wait(self.saga, run_id, self.timeout, refusals=self.refusals)
            else:
                self.results[i] = self.saga.wait(run_id, self.timeout)
        except Exception as exc:
            self.results[i] = exc
        self.returned_at[i] = time.perf_counter()

    async def _loop(self) -> None:
        async def one(i: int, run_id: str) -> None:
            try:
                self.results[i] = await self.saga.wait_async(run_id, self.timeout)
            except Exception as exc:
                self.results[i] = exc
            self.returned_at[i] = time.perf_counter()

        try:
            await asyncio.gather(*(one(i, run_id) for i, run_id in enumerate(self.ids)))
        finally:
            await self.saga.store.aio.waiters.close()

    def failures(self) -> list[Exception]:
        """What the waiters that gave up raised so far (a waiter's error ends it)."""
        return [r for r in self.results if isinstance(r, Exception)]

    def join(self, timeout: float) -> None:
        """Wait for every waiter to return; each must have returned the run compensated or
        raised (:meth:`failures`)."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = sum(thread.is_alive() for thread in self.threads)
        if left:
            raise BenchError(f"{self.mode}: {left} waiter thread(s) still waiting {timeout:g} s after the cancels")
        wrong = [r for r in self.results if isinstance(r, SagaState) and r.status is not Status.COMPENSATED]
        if wrong:
            raise BenchError(f"{self.mode}: {len(wrong)} waiter(s) did not return the cancelled run: {wrong[0]!r}")


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of a waiter's error, and of its cause's (what redis-py said)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    return f"{text} (from {type(cause).__name__}: {cause})" if cause is not None else text


def idle_rep(
    saga: Any, client: redis.Redis, mode: str, n: int, window: float, settle: float = SETTLE_S
) -> dict[str, Any]:
    """One repetition of the idle cost of ``n`` waiters of ``mode`` (see the module)."""
    ids = [saga.start({"n": i}) for i in range(n)]
    group = WaiterGroup(saga, ids, mode, timeout=settle + window + READY_LIMIT_S + 600)
    base = sum(_calls(client).values())
    t0 = time.perf_counter()
    group.start()
    # every waiter still waiting has made its first read (at least one command each)
    while sum(_calls(client).values()) - base < n - len(group.failures()):
        if time.perf_counter() - t0 > READY_LIMIT_S:
            raise BenchError(f"{mode}: the {n} waiters did not all read their run within {READY_LIMIT_S:g} s")
        time.sleep(0.05)
    ready_s = time.perf_counter() - t0
    time.sleep(settle)
    if mode == "wait" and not saga.store.waiters.live:
        raise BenchError("wait(): the waiters' subscription is not live")
    failed_before, refused_before = len(group.failures()), group.refusals.count
    before, cpu0, rcpu0 = _calls(client), own_cpu(), redis_cpu(client)
    w0 = time.perf_counter()
    time.sleep(window)
    after, cpu1, rcpu1 = _calls(client), own_cpu(), redis_cpu(client)
    elapsed = time.perf_counter() - w0
    failed_in_window = len(group.failures()) - failed_before
    refused_in_window = group.refusals.count - refused_before
    delta = {cmd: k - before.get(cmd, 0) for cmd, k in after.items() if k != before.get(cmd, 0)}
    cancelled_at = []
    with _quiet():
        for run_id in ids:
            cancelled_at.append(time.perf_counter())
            control.cancel(run_id, reason="bench: end of the idle window")
    group.join(READY_LIMIT_S)
    woken = [
        (back - sent) * 1000
        for back, sent, result in zip(group.returned_at, cancelled_at, group.results, strict=True)
        if isinstance(result, SagaState)
    ] or [0.0]
    failures = group.failures()
    total = sum(delta.values())
    return {
        "mode": mode,
        "waiters": n,
        "window_s": round(elapsed, 3),
        "commands": total,
        "commands_per_s": round(total / elapsed, 2),
        "by_command": dict(sorted(delta.items(), key=lambda kv: -kv[1])),
        "client_cpu_pct": round((cpu1 - cpu0) * 100 / elapsed, 2),
        "redis_cpu_pct": round((rcpu1 - rcpu0) * 100 / elapsed, 2),
        "first_reads_s": round(ready_s, 3),
        "cancels_s": round(time.perf_counter() - cancelled_at[0], 3) if cancelled_at else 0.0,
        "woken_after_cancel_ms": {"p50": round(percentile(woken, 50), 2), "max": round(max(woken), 2)},
        "failed": len(failures),
        "failed_before_window": failed_before,
        "failed_in_window": failed_in_window,
        "errors": sorted({_error_text(exc) for exc in failures})[:3],
        "pool_refused_reads": group.refusals.count,
        "pool_refused_reads_in_window": refused_in_window,
    }


# --- latency ------------------------------------------------------------------------------------


@dataclass
class Timed:
    """One latency repetition, in ms: from each run's terminal commit to its waiter returning,
    and, timed apart after it returned, one read of the finished run as the waiter makes it
    once woken (``get``, ``get_async``)."""

    latency_ms: list[float]
    read_ms: list[float]


def _completed_at(saga: Any, run_id: str) -> float:
    """Epoch seconds of the run's ``saga.completed`` event (the terminal commit's ``at``)."""
    for event in reversed(saga.events(run_id)):
        if event.get("type") == "saga.completed":
            return parse_iso(str(event["at"]))
    raise BenchError(f"run {run_id} has no saga.completed event")


def _check(run_id: str, outcome: Any) -> None:
    if not isinstance(outcome, SagaState) or outcome.status is not Status.COMPLETED:
        raise BenchError(f"latency run {run_id}: the waiter returned {outcome!r}, not the completed run")


def sync_latency(saga: Any, client: redis.Redis, mode: str, samples: int, hold: float) -> Timed:
    """``samples`` latencies of ``wait()`` (or :func:`poll_wait`) in one waiter thread."""
    from .waiters_app import gate_key, reached_key

    wait: Callable[[str], SagaState] = (
        (lambda run_id: poll_wait(saga, run_id, 30.0)) if mode == "poll" else (lambda r: saga.wait(r, 30.0))
    )
    todo: queue.Queue[str | None] = queue.Queue()
    done: queue.Queue[tuple[float, Any]] = queue.Queue()

    def waiter() -> None:
        while (run_id := todo.get()) is not None:
            try:
                state: Any = wait(run_id)
            except Exception as exc:
                state = exc
            done.put((time.time(), state))

    thread = threading.Thread(target=waiter, name="bench-latency-waiter", daemon=True)
    thread.start()
    out = Timed([], [])
    try:
        for _ in range(samples):
            run_id = saga.start({})
            todo.put(run_id)
            if client.blpop([reached_key(run_id)], timeout=60) is None:
                raise BenchError(f"latency run {run_id}: its step never ran")
            time.sleep(hold)
            client.lpush(gate_key(run_id), "go")
            try:
                returned, state = done.get(timeout=60)
            except queue.Empty:
                raise BenchError(f"latency run {run_id}: {mode} did not return within 60 s") from None
            _check(run_id, state)
            out.latency_ms.append((returned - _completed_at(saga, run_id)) * 1000)
            t0 = time.perf_counter()
            saga.get(run_id)
            out.read_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        todo.put(None)
        thread.join(60)
    return out


async def _async_latency(saga: Any, url: str, samples: int, hold: float) -> Timed:
    from .waiters_app import gate_key, reached_key

    gate: Any = redis.asyncio.Redis.from_url(url, decode_responses=True)

    async def waiter(run_id: str) -> tuple[float, Any]:
        state = await saga.wait_async(run_id, 30.0)
        return time.time(), state

    out = Timed([], [])
    try:
        for _ in range(samples):
            run_id = await saga.start_async({})
            task = asyncio.create_task(waiter(run_id))
            if await gate.blpop([reached_key(run_id)], timeout=60) is None:
                raise BenchError(f"latency run {run_id}: its step never ran")
            await asyncio.sleep(hold)
            await gate.lpush(gate_key(run_id), "go")
            async with asyncio.timeout(60):
                returned, state = await task
            _check(run_id, state)
            out.latency_ms.append((returned - _completed_at(saga, run_id)) * 1000)
            t0 = time.perf_counter()
            await saga.get_async(run_id)
            out.read_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        await saga.store.aio.waiters.close()
        await gate.aclose()
    return out


def latency_rep(saga: Any, client: redis.Redis, url: str, mode: str, samples: int, hold: float) -> Timed:
    """``samples`` latencies from the terminal commit to the waiter of ``mode`` returning."""
    if mode == "wait_async":
        return asyncio.run(_async_latency(saga, url, samples, hold))
    return sync_latency(saga, client, mode, samples, hold)


# --- the section ----------------------------------------------------------------------------------


def waiter_figures(
    base_env: Mapping[str, str],
    *,
    waiters: int,
    window: float,
    reps: int,
    samples: int,
    hold: float = HOLD_S,
    concurrency: int = CONCURRENCY,
    logs: Path = RESULTS,
) -> dict[str, Any]:
    """Every figure of the module, as the ``waiters`` section of the results. ``base_env``: the
    worker's environment (``SAGA_*`` settings but the Redis URLs, which are this part's own)."""
    began = time.monotonic()
    logs.mkdir(parents=True, exist_ok=True)
    app = importlib.import_module("bench.waiters_app")
    poll_window = min(window, POLL_WINDOW)
    idle: dict[str, list[dict[str, Any]]] = {mode: [] for mode in IDLE_MODES}
    latency: dict[str, list[Timed]] = {mode: [] for mode in LATENCY_MODES}
    with ExitStack() as stack:
        servers: dict[str, RedisServer] = {}
        for name in ("idle", "latency"):
            server = RedisServer()
            stack.callback(server.close)
            servers[name] = server.start()

        print(
            f"  idle: {waiters} waiters at once, {window:g} s windows ({poll_window:g} s for the polling loop), "
            f"{reps} repetitions of {', '.join(IDLE_MODES)}:",
            flush=True,
        )
        url = servers["idle"].url
        settings = _settings(_saga_env(base_env, url))
        with configured(default_registry(), settings, app.saga_app):
            client = plain_client(url)
            stack.callback(client.close)
            try:
                for i in range(1, reps + 1):
                    for mode in IDLE_MODES:
                        rep = idle_rep(app.gated1, client, mode, waiters, poll_window if mode == "poll" else window)
                        idle[mode].append(rep)
                        _print_idle(i, reps, rep)
            finally:
                app.gated1.store.waiters.close()

        url = servers["latency"].url
        env = _saga_env(base_env, url)
        settings = _settings(env)
        with configured(default_registry(), settings, app.saga_app):
            log = logs / "waiters-worker.log"
            log.write_bytes(b"")
            worker = Worker("bench.waiters_app:saga_app", env, log, concurrency=concurrency)
            stack.callback(worker.stop)
            worker.start()
            client = plain_client(url)
            stack.callback(client.close)
            print(
                f"  latency: {reps} x {samples} runs per waiter ({', '.join(LATENCY_MODES)}), gate held "
                f"{hold * 1000:g} ms after the step runs...",
                flush=True,
            )
            try:
                for mode in LATENCY_MODES:
                    latency_rep(app.gated1, client, url, mode, WARMUP_SAMPLES, hold)
                for i in range(1, reps + 1):
                    for mode in LATENCY_MODES:
                        timed = latency_rep(app.gated1, client, url, mode, samples, hold)
                        latency[mode].append(timed)
                        got = timed.latency_ms
                        print(
                            f"    rep {i}/{reps} {mode:10}: p50 {percentile(got, 50):6.3f} ms, "
                            f"p95 {percentile(got, 95):6.3f} ms, max {max(got):7.3f} ms; a read of the finished "
                            f"run alone: p50 {percentile(timed.read_ms, 50):.3f} ms",
                            flush=True,
                        )
            except BenchError as exc:
                raise BenchError(f"{exc}; the worker's log ends with:\n{worker.log_tail()}") from None
            finally:
                app.gated1.store.waiters.close()

    section: dict[str, Any] = {
        "waiters": waiters,
        "window_s": window,
        "poll_window_s": poll_window,
        "settle_s": SETTLE_S,
        "fallback_poll_s": FALLBACK_POLL,
        "reps": reps,
        "samples": samples,
        "hold_s": hold,
        "concurrency": concurrency,
        "idle": {
            mode: {
                "what": IDLE_MODES[mode],
                "commands_per_s": _spread([r["commands_per_s"] for r in rows], 2),
                "client_cpu_pct": _spread([r["client_cpu_pct"] for r in rows], 2),
                "redis_cpu_pct": _spread([r["redis_cpu_pct"] for r in rows], 2),
                "reps": rows,
            }
            for mode, rows in idle.items()
        },
        "latency": {},
    }
    for mode, rows in latency.items():
        per_rep = [summarize_latency(timed.latency_ms) for timed in rows]
        section["latency"][mode] = {
            "what": LATENCY_MODES[mode],
            "p50_ms": _spread([r["p50_ms"] for r in per_rep]),
            "p95_ms": _spread([r["p95_ms"] for r in per_rep]),
            "max_ms": round(max(r["max_ms"] for r in per_rep), 3),
            "read_p50_ms": _spread([percentile(timed.read_ms, 50) for timed in rows]),
            "reps": per_rep,
            "samples_ms": [[round(x, 3) for x in timed.latency_ms] for timed in rows],
        }
    section["seconds"] = round(time.monotonic() - began, 1)
    return section


def _print_idle(i: int, reps: int, rep: dict[str, Any]) -> None:
    top = ", ".join(f"{cmd} {k}" for cmd, k in list(rep["by_command"].items())[:4])
    woken = rep["woken_after_cancel_ms"]
    if rep["pool_refused_reads"]:
        print(
            f"    {rep['pool_refused_reads']} reads refused by the client's pool (no connection free; "
            f"{rep['pool_refused_reads_in_window']} in the window), retried",
            flush=True,
        )
    if rep["failed"]:
        print(
            f"    {rep['failed']} of {rep['waiters']} {rep['mode']} waiters raised ({rep['failed_before_window']} "
            f"before the window, {rep['failed_in_window']} in it): {rep['errors'][0]}",
            flush=True,
        )
    print(
        f"    rep {i}/{reps} {rep['mode']:10}: {rep['commands_per_s']:9.2f} commands/s ({rep['commands']} in "
        f"{rep['window_s']:g} s{': ' + top if top else ''}); client CPU {rep['client_cpu_pct']:.1f} %, Redis CPU "
        f"{rep['redis_cpu_pct']:.1f} %; returned {woken['p50']:g} ms (max {woken['max']:g}) after their run's "
        "cancel began",
        flush=True,
    )


def _saga_env(base_env: Mapping[str, str], url: str) -> dict[str, str]:
    """``base_env`` with this part's Redis as store and broker, and no metrics port."""
    return {**base_env, "SAGA_REDIS_URL": url, "SAGA_BROKER_URL": url, "SAGA_METRICS_PORT": "0"}


def _settings(env: Mapping[str, str]) -> Settings:
    """The settings ``env``'s ``SAGA_*`` variables say."""
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("SAGA_")})


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.waiters``: the push-based waiting figures alone (a table, and a JSON file)."""

    p = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__.split("\n\n")[0])
    p.add_argument("--waiters", type=int, help=f"idle waiters at once (default {IDLE_WAITERS}; quick 100)")
    p.add_argument(
        "--window",
        type=float,
        help=f"seconds of each idle window (default {FALLBACK_POLL:g}, the fallback read's period; quick 5)",
    )
    p.add_argument("--samples", type=int, help="latency runs per waiter and repetition (default 200; quick 20)")
    p.add_argument("--reps", type=int, help="repetitions (default 3; quick 2)")
    p.add_argument("--lease", type=float, default=2.0, help="SAGA_LEASE_SECONDS of the saga (default 2)")
    p.add_argument("--quick", action="store_true", help="small counts (writes bench/results/waiters-quick.json)")
    p.add_argument("--json", type=Path, help="where to write the figures (default bench/results/waiters.json)")
    args = p.parse_args(argv)
    waiters = args.waiters or (100 if args.quick else IDLE_WAITERS)
    window = args.window or (5.0 if args.quick else FALLBACK_POLL)
    samples = args.samples or (20 if args.quick else 200)
    reps = args.reps or (2 if args.quick else 3)
    if min(waiters, samples, reps) < 1 or window <= 0 or args.lease <= 0:
        p.error("counts, the window and the lease must be positive")
    out = args.json or RESULTS / ("waiters-quick.json" if args.quick else "waiters.json")
    base = section_env(args.lease)
    print(
        f"push-based waiting benchmark: {waiters} idle waiters, {window:g} s windows, {samples} latency runs, "
        f"{reps} repetitions; {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return run_section(
        out,
        lambda: {"waiters": waiter_figures(base, waiters=waiters, window=window, reps=reps, samples=samples)},
        waiters_table,
        RESULTS,
    )


if __name__ == "__main__":
    sys.exit(main())
