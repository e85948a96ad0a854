"""What the benchmark measures, for each variant: throughput repetitions (with Redis command and
CPU deltas), single-run latency, and (saga only) recovery after a SIGKILLed worker.

The two variants share an interface (:class:`Variant`) so every figure is taken the same way for
both. Each variant has a Redis of its own (broker, and store or result backend), so
``INFO commandstats`` deltas of one never include the other's traffic.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from .procs import Worker, cpu_seconds

BENCH_DIR = Path(__file__).resolve().parent
#: Where every section writes its JSON, tables and worker logs.
RESULTS = BENCH_DIR / "results"
#: Steps of the benchmark's sagas (the plain one and the one with a group).
STEPS = 5
#: Each worker's prefork concurrency.
CONCURRENCY = 2
#: Runs each variant does before it is measured.
WARMUP_RUNS = 20
#: ``INFO`` is the benchmark's own observation: never counted as the system's work.
OBSERVATION_COMMANDS = ("info",)
#: Keyspace notifications turned on (on both Redis servers) while latency is measured only.
LATENCY_NOTIFY = "Eg"
EXPIRE_CHANNEL = "__keyevent@{db}__:expire"
#: Seconds one ``AsyncResult.get()`` call waits before the result is read again.
GET_SLICE = 0.1


class BenchError(RuntimeError):
    """The benchmark cannot go on (a run did not complete, a worker died)."""


def plain_client(url: str) -> redis.Redis:
    """A client for the benchmark's own reads (no retries, long timeouts)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=60)


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the server has used (user + system)."""
    cpu: dict[str, Any] = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def own_cpu() -> float:
    """CPU seconds this process (the benchmark client) has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class CompletionWatch:
    """Sees the moment a key gets an expiry (``__keyevent@db__:expire``) without polling.

    A saga run's meta key gets its retention TTL in the very script that commits its completion;
    a Celery task's result key gets its TTL when its result is stored (SETEX). The notification is
    only switched on while latency is measured.
    """

    def __init__(self, url: str) -> None:
        self.client = plain_client(url)
        db = int(self.client.connection_pool.connection_kwargs.get("db", 0))
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(EXPIRE_CHANNEL.format(db=db))

    def wait_for(self, key: str, timeout: float) -> float:
        """Block until ``key`` is given an expiry; the ``time.perf_counter()`` at that moment."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise BenchError(f"no completion of {key} within {timeout}s")
            message = self.pubsub.get_message(timeout=left)
            if message is not None and message.get("data") == key:
                return time.perf_counter()

    def close(self) -> None:
        """Unsubscribe and disconnect."""
        self.pubsub.close()
        self.client.close()


class Variant(ABC):
    """One side of the comparison: how to start runs and how to know they finished."""

    name: str

    def __init__(self, url: str, worker: Worker) -> None:
        self.url = url
        self.worker = worker
        self.redis = plain_client(url)
        self.watch: CompletionWatch | None = None
        #: Completions the client was never told of (Celery's result consumer; 0 for the saga).
        self.missed = 0

    @abstractmethod
    def fire(self, n: int) -> list[Any]:
        """Start ``n`` runs at once; a handle per run."""

    @abstractmethod
    def wait_all(self, handles: list[Any], timeout: float) -> dict[str, int]:
        """Return once every run finished; the Redis commands the benchmark itself sent to find
        out (command -> calls), which are not the system's work."""

    @abstractmethod
    def check(self, handles: list[Any]) -> None:
        """Raise :class:`BenchError` unless every run completed successfully."""

    @abstractmethod
    def start_one(self) -> tuple[Any, str]:
        """Start one run; its handle and the key whose expiry marks its completion."""

    @abstractmethod
    def wait_api(self, handle: Any, timeout: float) -> None:
        """Wait for one run the way a user does (``Saga.wait`` / ``AsyncResult.get``)."""

    def after_event(self, handle: Any) -> None:  # noqa: B027 - optional hook
        """Clean-up after a run timed by its completion event (outside the timing)."""

    def close(self) -> None:
        """Release the clients."""
        if self.watch is not None:
            self.watch.close()
        self.redis.close()


class SagaVariant(Variant):
    """(A) ``noop5.start`` per run; completion read from the store's ``active`` index."""

    name = "saga"

    def __init__(self, url: str, worker: Worker, saga: Any) -> None:
        super().__init__(url, worker)
        self.saga = saga

    def fire(self, n: int) -> list[Any]:
        """Start ``n`` runs; their ids."""
        return [self.saga.start({"n": i}) for i in range(n)]

    def wait_all(self, handles: list[Any], timeout: float) -> dict[str, int]:
        """Poll the number of unfinished runs (``ZCARD`` of each bucket's ``active`` index, in one
        pipeline) every 10 ms until it is 0.

        Cheap commands, none on the saga's hot path; only valid when nothing else runs on this
        store, which holds during the throughput repetitions.
        """
        store = self.saga.store
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            polls += 1
            if store.indexes.active_depth() == 0:
                return {"zcard": polls * store.keyspace.buckets}
            if time.monotonic() > deadline:
                raise BenchError(f"saga runs still unfinished after {timeout}s")
            time.sleep(0.01)

    def check(self, handles: list[Any]) -> None:
        """Every run is completed."""
        for i in range(0, len(handles), 200):
            chunk = handles[i : i + 200]
            for run_id, state in zip(chunk, self.saga.store.reads.snapshots(chunk), strict=True):
                if state is None or state.status.value != "completed":
                    raise BenchError(f"saga run {run_id} is {state.status.value if state else 'missing'}")

    def start_one(self) -> tuple[Any, str]:
        """Start a run; its id and its meta key."""
        run_id = self.saga.start({"n": 0})
        return run_id, self.saga.store.keyspace.keys(run_id).meta

    def wait_api(self, handle: Any, timeout: float) -> None:
        """``Saga.wait`` (woken by the notification of the commit that ends the run)."""
        state = self.saga.wait(handle, timeout=timeout)
        if state.status.value != "completed":
            raise BenchError(f"saga run {handle} is {state.status.value}")

    def after_event(self, handle: Any) -> None:
        """The run completed (not compensated)."""
        self.check([handle])


class ChainVariant(Variant):
    """(B) ``chain(t1.si(), ..., t5.si()).apply_async()`` per run; completion from the result backend."""

    name = "chain"

    def __init__(self, url: str, worker: Worker, tasks: Sequence[Any]) -> None:
        super().__init__(url, worker)
        self.tasks = tasks
        #: ``get()`` slices that timed out (some because the notification was lost: ``missed``).
        self.retries = 0

    def _chain(self) -> Any:
        from celery import chain

        return chain(*(t.si() for t in self.tasks)).apply_async()

    def fire(self, n: int) -> list[Any]:
        """Send ``n`` chains; the AsyncResult of each one's last task."""
        return [self._chain() for _ in range(n)]

    def get(self, result: Any, deadline: float) -> None:
        """``result.get()`` as a user calls it, in slices of :data:`GET_SLICE` seconds.

        Celery's Redis result consumer subscribes to a result's channel on one connection and
        reads the stored result on another without waiting for the subscription: a result
        stored in between is never delivered, and a plain ``get()`` then waits forever (seen
        about once in a few thousand chains here). Each slice that times out reads the result
        again (one GET); ``missed`` counts the slices after which the result was already
        stored, i.e. notifications the client lost.
        """
        from celery.exceptions import TimeoutError as ResultTimeout

        while True:
            try:
                result.get(timeout=GET_SLICE)
                return
            except ResultTimeout:
                self.retries += 1
                if self.redis.exists(f"celery-task-meta-{result.id}"):
                    self.missed += 1
                if time.monotonic() > deadline:
                    raise BenchError(f"chain {result.id} unfinished after its deadline") from None

    def wait_all(self, handles: list[Any], timeout: float) -> dict[str, int]:
        """``AsyncResult.get()`` of each chain's last task, in order, as a user would (see :meth:`get`);
        the benchmark's own commands are the retries' GET and EXISTS."""
        deadline = time.monotonic() + timeout
        before = self.retries
        try:
            for result in handles:
                self.get(result, deadline)
        except BenchError:
            unready = [r for r in handles if not r.ready()]
            raise BenchError(
                f"chains still unfinished after {timeout}s: {len(unready)} of {len(handles)} results not "
                f"ready; queue length {self.redis.llen('celery')}, unacked {self.redis.hlen('unacked')}"
            ) from None
        retries = self.retries - before
        return {"get": retries, "exists": retries} if retries else {}

    def check(self, handles: list[Any]) -> None:
        """Every last task succeeded."""
        for result in handles:
            if result.state != "SUCCESS":
                raise BenchError(f"chain {result.id} is {result.state}")

    def start_one(self) -> tuple[Any, str]:
        """Send a chain; its last result and that result's key."""
        result = self._chain()
        return result, f"celery-task-meta-{result.id}"

    def wait_api(self, handle: Any, timeout: float) -> None:
        """``AsyncResult.get`` of the last task (see :meth:`get`)."""
        self.get(handle, time.monotonic() + timeout)

    def after_event(self, handle: Any) -> None:
        """Read the result too, so the client's result subscription is dropped."""
        self.get(handle, time.monotonic() + 30)


@dataclass
class Rep:
    """One throughput repetition of one variant."""

    variant: str
    runs: int
    seconds: float
    runs_per_s: float
    commands: int
    commands_per_step: float
    by_command: dict[str, int]
    excluded_observation: dict[str, int]
    worker_cpu_ms_per_run: float
    redis_cpu_ms_per_run: float
    client_cpu_ms_per_run: float
    missed_notifications: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def throughput_rep(v: Variant, runs: int, timeout: float, steps: int = 5) -> Rep:
    """Fire ``runs`` runs at once and wait for all of them; rate, commands and CPU deltas."""
    if not v.worker.alive():
        raise BenchError(f"the {v.name} worker is not running; its log ends with:\n{v.worker.log_tail()}")
    pids = v.worker.pids()
    rcpu0 = redis_cpu(v.redis)
    before = command_calls(v.redis)
    wcpu0, ccpu0 = cpu_seconds(pids), own_cpu()
    missed = v.missed
    t0 = time.perf_counter()
    handles = v.fire(runs)
    try:
        own = v.wait_all(handles, timeout)
    except BenchError as exc:
        raise BenchError(f"{exc}; the {v.name} worker's log ends with:\n{v.worker.log_tail()}") from None
    elapsed = time.perf_counter() - t0
    wcpu1, ccpu1 = cpu_seconds(pids), own_cpu()
    after = command_calls(v.redis)
    rcpu1 = redis_cpu(v.redis)
    delta = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    excluded: dict[str, int] = {}
    for cmd in OBSERVATION_COMMANDS:
        if cmd in delta:
            excluded[cmd] = delta.pop(cmd)
    for cmd, n in own.items():
        delta[cmd] = delta.get(cmd, 0) - n
        excluded[cmd] = excluded.get(cmd, 0) + n
        if delta[cmd] == 0:
            del delta[cmd]
    v.check(handles)
    total = sum(delta.values())
    return Rep(
        variant=v.name,
        runs=runs,
        seconds=round(elapsed, 4),
        runs_per_s=round(runs / elapsed, 2),
        commands=total,
        commands_per_step=round(total / (runs * steps), 3),
        by_command=dict(sorted(delta.items(), key=lambda kv: -kv[1])),
        excluded_observation=excluded,
        worker_cpu_ms_per_run=round((wcpu1 - wcpu0) * 1000 / runs, 3),
        redis_cpu_ms_per_run=round((rcpu1 - rcpu0) * 1000 / runs, 3),
        client_cpu_ms_per_run=round((ccpu1 - ccpu0) * 1000 / runs, 3),
        missed_notifications=v.missed - missed,
    )


def summarize_reps(reps: list[Rep]) -> dict[str, Any]:
    """One variant's throughput figures over its repetitions (medians; commands summed)."""
    runs = sum(r.runs for r in reps)
    by_cmd: dict[str, int] = {}
    for r in reps:
        for cmd, n in r.by_command.items():
            by_cmd[cmd] = by_cmd.get(cmd, 0) + n
    steps = runs * STEPS
    return {
        "runs_per_s": round(statistics.median(r.runs_per_s for r in reps), 2),
        "commands_per_step": round(sum(r.commands for r in reps) / steps, 3),
        "commands_per_step_by_command": {
            cmd: round(n / steps, 3) for cmd, n in sorted(by_cmd.items(), key=lambda kv: -kv[1])
        },
        "cpu_ms_per_run": {
            "worker": round(statistics.median(r.worker_cpu_ms_per_run for r in reps), 3),
            "redis": round(statistics.median(r.redis_cpu_ms_per_run for r in reps), 3),
            "client": round(statistics.median(r.client_cpu_ms_per_run for r in reps), 3),
        },
        "reps": [r.as_dict() for r in reps],
    }


def print_rep(i: int, n: int, r: Rep) -> None:
    """One line of progress for repetition ``i`` of ``n``."""
    print(
        f"  rep {i}/{n} {r.variant:5}: {r.runs} runs in {r.seconds:6.2f} s = {r.runs_per_s:7.1f} runs/s, "
        f"{r.commands_per_step:5.2f} commands/step, CPU/run: worker {r.worker_cpu_ms_per_run:.2f} ms, "
        f"redis {r.redis_cpu_ms_per_run:.2f} ms, client {r.client_cpu_ms_per_run:.2f} ms"
        + (f"; {r.missed_notifications} result notification(s) lost by the client" if r.missed_notifications else ""),
        flush=True,
    )


def monitor_probe(v: Variant, runs: int, timeout: float = 60.0, steps: int = 5) -> dict[str, Any]:
    """Run ``runs`` runs at once under ``MONITOR`` and split the commands by where they come
    from: sent by a client, or run inside a Lua script (``INFO commandstats`` counts both).

    MONITOR slows Redis down, so this is a separate, untimed sample.
    """
    sentinel = f"bench-probe-end-{uuid.uuid4().hex}"
    counts: dict[str, dict[str, int]] = {"client": {}, "script": {}}
    ready = threading.Event()
    failure: list[BaseException] = []
    monitor_client = plain_client(v.url)

    def read() -> None:
        try:
            with monitor_client.monitor() as monitor:  # type: ignore[no-untyped-call]
                ready.set()
                for entry in monitor.listen():
                    command = str(entry["command"])
                    if command.endswith(sentinel):
                        return
                    name = command.split(" ", 1)[0].lower()
                    side = counts["script" if entry.get("client_type") == "lua" else "client"]
                    side[name] = side.get(name, 0) + 1
        except Exception as exc:
            failure.append(exc)
            ready.set()

    reader = threading.Thread(target=read, name="bench-monitor", daemon=True)
    reader.start()
    try:
        if not ready.wait(10):
            raise BenchError("MONITOR did not start")
        time.sleep(0.05)
        handles = v.fire(runs)
        own = v.wait_all(handles, timeout)
        v.redis.echo(sentinel)
        reader.join(timeout)
    finally:
        monitor_client.close()
    if failure:
        raise BenchError(f"MONITOR failed: {failure[0]}")
    v.check(handles)
    for cmd, n in own.items():
        counts["client"][cmd] = counts["client"].get(cmd, 0) - n
    sent = sum(counts["client"].values())
    scripted = sum(counts["script"].values())
    n_steps = runs * steps
    return {
        "runs": runs,
        "sent_per_step": round(sent / n_steps, 3),
        "in_scripts_per_step": round(scripted / n_steps, 3),
        "sent_by_command": {
            k: round(n / n_steps, 3) for k, n in sorted(counts["client"].items(), key=lambda kv: -kv[1]) if n
        },
        "in_scripts_by_command": {
            k: round(n / n_steps, 3) for k, n in sorted(counts["script"].items(), key=lambda kv: -kv[1])
        },
    }


def enable_notifications(variants: Sequence[Variant], on: bool) -> None:
    """Switch the expiry keyevent notifications on or off on every variant's Redis."""
    for v in variants:
        v.redis.config_set("notify-keyspace-events", LATENCY_NOTIFY if on else "")
        if on and v.watch is None:
            v.watch = CompletionWatch(v.url)
        elif not on and v.watch is not None:
            v.watch.close()
            v.watch = None


def latency_pair(v: Variant, timeout: float = 30.0) -> tuple[float, float]:
    """One sequential run timed to its completion event, then one timed through the user API;
    both in milliseconds."""
    assert v.watch is not None
    t0 = time.perf_counter()
    handle, key = v.start_one()
    t1 = v.watch.wait_for(key, timeout)
    v.after_event(handle)
    event_ms = (t1 - t0) * 1000
    t0 = time.perf_counter()
    handle, _ = v.start_one()
    v.wait_api(handle, timeout)
    api_ms = (time.perf_counter() - t0) * 1000
    return event_ms, api_ms


def summarize_latency(samples: Sequence[float]) -> dict[str, float]:
    """p50, p95, mean, min and max of ``samples`` (ms)."""
    return {
        "p50_ms": round(percentile(samples, 50), 3),
        "p95_ms": round(percentile(samples, 95), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
        "min_ms": round(min(samples), 3),
        "max_ms": round(max(samples), 3),
        "n": len(samples),
    }


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def recovery_trial(
    saga: Any, worker: Worker, *, sleep: float = 30.0, into_step: float = 0.5, limit: float = 60.0
) -> dict[str, Any]:
    """Start a ``recover5`` run, SIGKILL the worker's whole process group ``into_step`` seconds
    into step 3 (which sleeps ``sleep`` s on its first attempt), start a fresh worker, and time
    the run from the kill to its completion. ``recovery_s`` is None when it did not complete
    within ``limit`` seconds."""
    store = saga.store
    client = store.keyspace.client
    run_id = saga.start({"sleep": sleep})
    meta = store.keyspace.keys(run_id).meta
    deadline = time.monotonic() + 60
    while True:  # step 3 (index 2) has begun: its lease is taken
        cursor, status = client.hmget(meta, "cursor", "status")
        if cursor == "2" and status == "running" and store.reads.lease(run_id):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"recovery run {run_id} never reached step 3 (at {cursor}, {status})")
        time.sleep(0.005)
    time.sleep(into_step)
    lease_key = store.keyspace.keys(run_id).lease
    lock_key = store.keyspace.global_keys.watchdog
    killed_at = time.time()
    worker.kill()
    worker.start()
    new_pid = f":{worker.pgid}:"
    marks: dict[str, float] = {}
    status = ""
    while time.time() - killed_at < limit:
        pipe = client.pipeline(transaction=False)
        pipe.hget(meta, "status")
        pipe.exists(lease_key)
        pipe.get(lock_key)
        status, lease_live, lock_owner = pipe.execute()
        now = time.time() - killed_at
        if not lease_live:
            marks.setdefault("lease_gone_s", now)
        if lock_owner and new_pid in lock_owner:
            marks.setdefault("watchdog_lock_taken_s", now)
        if status in ("completed", "compensated", "failed"):
            break
        time.sleep(0.01)
    done_at = time.time()
    events = store.reads.events(run_id)
    resumed = [e for e in events if e.get("type") == "saga.resumed"]
    ok = status == "completed"
    return {
        "run_id": run_id,
        "status": status,
        "recovery_s": round(done_at - killed_at, 3) if ok else None,
        "lease_gone_s": round(marks["lease_gone_s"], 3) if "lease_gone_s" in marks else None,
        "watchdog_lock_taken_s": round(marks["watchdog_lock_taken_s"], 3) if "watchdog_lock_taken_s" in marks else None,
        "resumed_after_s": round(_epoch(resumed[0]["at"]) - killed_at, 3) if resumed else None,
        "resumes": len(resumed),
        "step3_attempts": sum(1 for e in events if e.get("type") == "step.started" and e.get("step") == 2),
    }


def run_section(
    out: Path, measure: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str], logs: Path
) -> int:
    """Run one section of the benchmark on its own (``python -m bench.<section>``): ``measure()``
    its result, write it to ``out`` as JSON and print ``table(result)``. Returns the exit status:
    130 on Ctrl-C, 1 when the benchmark fails (worker logs in ``logs``)."""
    try:
        result = measure()
    except KeyboardInterrupt:
        print("\ninterrupted: every process the benchmark started is stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"benchmark failed: {exc}\n(worker logs in {logs})", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result))
    print(f"wrote {out}")
    return 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def section_env(lease: float, **extra: str) -> dict[str, str]:
    """For a section run on its own (``python -m bench.<section>``): Ctrl-C and SIGTERM stop it
    cleanly, and its processes get this environment without the caller's ``SAGA_*`` settings,
    with ``lease`` as SAGA_LEASE_SECONDS, unbuffered output and ``extra``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    base.update({"SAGA_LEASE_SECONDS": f"{lease:g}", "PYTHONUNBUFFERED": "1", **extra})
    return base
