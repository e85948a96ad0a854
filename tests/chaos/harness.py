"""Drives the chaos suite: its own Redis (AOF, fsync always), prefork workers as subprocesses,
kills and restarts, then checks every run against the effects ledger.

A third of the runs are of the grouped saga (a 3-member parallel group); a fifth of the runs of
either saga have a deadline shorter than the time one of their steps (never the last) holds
after its effect, so they expire mid-run whatever the timing: the step after it can begin
only past the deadline, and a worker refuses to begin a forward step then.

With TEST_STORE=cluster the store is a 3-master Redis Cluster of its own (AOF) and the Redis
restart is a master's; the broker and the effects ledger stay on the plain Redis.

The backlog case (:func:`run_backlog`) is apart: one worker with one slot, runs of the backlog
saga (its first step fails once and heals) started at once, so every retry waits behind the
queue; no resume without a death, and with one, exactly the resumes the death explains."""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from saga import SagaError, SagaState, Settings
from saga.core import parse_iso, policy
from saga.registry import default_registry
from saga.testing import (
    RedisCluster,
    RedisServer,
    WorkerProcess,
    configured,
    process_children,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
from tests.chaos.app import GROUP_STAGES, GROUP_UNDOABLE, STEPS, UNDOABLE, app, backlog, chaos, declare, grouped

ROOT = Path(__file__).resolve().parents[2]

#: A deadline run's deadline, and how long its held step sleeps after its effect (longer: the
#: step after it cannot begin before the deadline, so the run expires whatever the timing).
DEADLINE = 1.5
HOLD = 2.0


@dataclass
class Run:
    """A run the harness started: which saga, with what payload and deadline."""

    saga: str
    payload: dict[str, Any]
    deadline: float | None = None


@dataclass
class Figures:
    runs: int = 0
    completed: int = 0
    compensated: int = 0
    kills_worker: int = 0
    kills_child: int = 0
    redis_restarts: int = 0
    raw_executions: int = 0
    effects: int = 0
    resumes: int = 0
    deploys: int = 0
    parked: int = 0
    grouped: int = 0
    grouped_completed: int = 0
    expired: int = 0
    by_version: dict[int, int] = field(default_factory=dict)
    #: runs of the grouped saga that ended compensated with a member's effect never undone: the
    #: member began (and acted) but never committed, and the group's unwind left it out
    leaked: list[str] = field(default_factory=list)
    recover_seconds: list[float] = field(default_factory=list)

    def report(self) -> str:
        rec = (
            f"median {statistics.median(self.recover_seconds):.1f}s, max {max(self.recover_seconds):.1f}s"
            if self.recover_seconds
            else "n/a"
        )
        return (
            f"chaos: {self.runs} runs ({self.completed} completed, {self.compensated} compensated, "
            f"{self.expired} of them past their deadline); {self.grouped} grouped ({self.grouped_completed} "
            "completed); "
            f"kills: {self.kills_worker} workers + {self.kills_child} pool children; "
            f"{self.redis_restarts} Redis restart(s); raw executions {self.raw_executions} vs effects "
            f"{self.effects}; resumes {self.resumes}; time from kill to resume: {rec}; {self.deploys} deploys, "
            f"runs by version {dict(sorted(self.by_version.items()))}, {self.parked} parked on the way; "
            f"{len(self.leaked)} grouped run(s) with a member's effect never undone"
        )


class Cluster:
    """A Redis and a set of worker processes that can be killed, replaced and redeployed with
    other saga versions."""

    def __init__(self, workers: int = 2, lease: float = 2.0, *, on_cluster: bool = False) -> None:
        self.redis = RedisServer(appendonly=True)
        self.store = RedisCluster(3, appendonly=True) if on_cluster else None
        self.lease = lease
        self.size = workers
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.versions: dict[int, str] = {}
        self.next_id = 0
        self.logdir = Path(self.redis.dir)

    @property
    def settings(self) -> Settings:
        """What the workers and the driving process run with."""
        return Settings(
            redis_url=self.redis.url if self.store is None else self.store.url,
            broker_url=self.redis.url,
            lease_seconds=self.lease,
            watchdog_interval=0.5,
            dispatch_timeout=15,
            metrics_port=0,
        )

    def start(self) -> None:
        self.redis.start()
        if self.store is not None:
            self.store.start()
        for _ in range(self.size):
            self.add_worker("1")

    def add_worker(self, versions: str) -> int:
        wid = self.next_id
        self.next_id += 1
        env = worker_env(self.settings, PYTHONPATH=str(ROOT), CHAOS_VERSIONS=versions, CHAOS_LEDGER_URL=self.redis.url)
        self.procs[wid] = start_worker_process(
            "tests.chaos.app", env, name=f"chaos{wid}", cwd=ROOT, log=self.logdir / f"worker{wid}.log"
        )
        self.versions[wid] = versions
        return wid

    def kill_worker(self) -> None:
        """SIGKILL a whole worker (parent and pool children) and start a replacement like it."""
        wid = random.choice(sorted(self.procs))
        stop_process_group(self.procs.pop(wid), signal.SIGKILL)
        self.add_worker(self.versions.pop(wid))

    def redeploy(self, versions: str, count: int | None = None) -> None:
        """Restart ``count`` workers (all by default) as a deploy does, declaring ``versions``:
        a warm shutdown (running bodies finish), then a new worker."""
        for wid in sorted(self.procs)[: count or len(self.procs)]:
            stop_process_group(self.procs.pop(wid), signal.SIGTERM)
            del self.versions[wid]
            self.add_worker(versions)

    def restart_store(self) -> None:
        """Restart the store's Redis (a SIGKILLed master of the cluster, restarted from its AOF)."""
        if self.store is None:
            self.redis.restart()
        else:
            self.store.restart_node(random.randrange(len(self.store.nodes)), kill=True)

    def kill_child(self) -> bool:
        """SIGKILL one pool child of a worker; its parent replaces it. Waits up to 20 s for a worker
        to have a child (a worker just started or replaced has none yet on a loaded machine)."""
        deadline = time.monotonic() + 20
        while True:
            for wid in random.sample(sorted(self.procs), len(self.procs)):
                children = process_children(self.procs[wid].pid)
                if children:
                    os.kill(random.choice(children), signal.SIGKILL)
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process_group(proc, signal.SIGKILL)
        self.procs.clear()
        self.redis.close()
        if self.store is not None:
            self.store.close()


def run_chaos(seconds: float, rate: float = 2.0, seed: int | None = None) -> Figures:
    """Start runs for ``seconds`` while killing workers and restarting Redis; check every run.

    Raises AssertionError with a precise message on the first broken invariant.
    """
    cluster = Cluster(on_cluster=os.environ.get("TEST_STORE") == "cluster")
    cluster.start()
    try:
        # this process only starts and inspects runs, against the cluster's Redis
        with configured(default_registry(), cluster.settings, app):
            return _drive(cluster, seconds, rate, random.Random(seed))
    finally:
        cluster.stop()


SAGAS = {"chaos": chaos, "chaosgroup": grouped}


def _start(run: Run, key: str) -> str:
    """Start a run (under the highest version declared here); a start that fails (Redis
    restarting) is retried with its key."""
    for _ in range(50):
        try:
            return SAGAS[run.saga].start(run.payload, key=key, deadline=run.deadline)
        except (SagaError, OSError, ConnectionError) as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"could not start a run: {last}")


def _plan_run(n: int, rng: random.Random) -> Run:
    """Run ``n``: of the grouped saga one time in three, a deadline run one time in five (so
    every 15 runs, one grouped and two 5-step deadline runs), whose held step takes each step
    but the last in turn (a grouped run's first three are the members); any other run is
    refused for good at a random step with a chance of 0.15."""
    saga = "chaosgroup" if n % 3 == 2 else "chaos"
    steps = [name for stage in _stages(saga, 1) for name in stage]
    run = Run(saga, {"p_transient": 0.15, "max_sleep": 0.4})
    if n % 5 == 0:
        turn = n // 15 if saga == "chaosgroup" else n // 15 * 2 + (n % 15 == 10)
        run.payload["hold"] = {steps[(turn + 1) % (len(steps) - 1)]: HOLD}
        run.deadline = DEADLINE
    elif rng.random() < 0.15:
        run.payload["permanent_at"] = rng.choice(steps)
    return run


def _stages(saga: str, version: int) -> tuple[tuple[str, ...], ...]:
    """The stages of ``saga`` at ``version``, in order: a step alone, or a group's members."""
    return GROUP_STAGES if saga == "chaosgroup" else tuple((name,) for name in STEPS[version])


def _drive(cluster: Cluster, seconds: float, rate: float, rng: random.Random) -> Figures:
    figures = Figures()
    plan: list[tuple[float, str]] = sorted(
        [(seconds * f, "kill_worker") for f in (0.2, 0.5, 0.8)]
        + [(seconds * f, "kill_child") for f in (0.35, 0.65)]
        + [(seconds * 0.45, "restart_redis")]
        # a deploy that drops version 1 on one worker (its runs park), then one that keeps both
        + [(seconds * 0.3, "deploy_v2_only"), (seconds * 0.6, "deploy_both")]
    )
    kills: list[float] = []
    started: dict[str, Run] = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        run = _plan_run(len(started), rng)
        run_id = _start(run, key=f"chaos-{len(started)}")
        started[run_id] = run
        while plan and time.monotonic() - t0 >= plan[0][0]:
            _, action = plan.pop(0)
            if action == "kill_worker":
                cluster.kill_worker()
                figures.kills_worker += 1
                kills.append(time.time())
            elif action == "kill_child" and cluster.kill_child():
                figures.kills_child += 1
                kills.append(time.time())
            elif action == "restart_redis":
                cluster.restart_store()
                figures.redis_restarts += 1
            elif action == "deploy_v2_only":
                cluster.redeploy("2", count=1)
                if default_registry().find("chaos", 2) is None:
                    declare([2], app=app)  # from now on this process starts version 2 runs
                figures.deploys += 1
            elif action == "deploy_both":
                cluster.redeploy("1,2")
                figures.deploys += 1
        time.sleep(rng.expovariate(rate))
    deadline = time.monotonic() + 90
    for run_id, run in started.items():
        left = deadline - time.monotonic()
        state = SAGAS[run.saga].wait(run_id, timeout=max(left, 0.1))
        assert state.status.value in ("completed", "compensated"), f"{run_id} ended {state.status.value}"
    _check(started, cluster, figures, kills)
    return figures


def _check(started: dict[str, Run], cluster: Cluster, figures: Figures, kills: list[float]) -> None:
    fx = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    dead = {d["run_id"]: d for d in chaos.store.indexes.dead_letters()}
    figures.runs = len(started)
    gave_up: set[str] = set()
    for run_id, run in started.items():
        saga = SAGAS[run.saga]
        state = saga.get(run_id)
        if run.saga == "chaos":
            figures.by_version[state.definition_version] = figures.by_version.get(state.definition_version, 0) + 1
        else:
            figures.grouped += 1
        assert saga.rebuild(run_id) == state, f"{run_id}: rebuild differs from the stored state"
        versions = [s.version for s in saga.history(run_id)]
        assert versions == list(range(1, state.version + 1)), f"{run_id}: versions {versions}"
        raw = {k: int(v) for k, v in fx.hgetall(f"raw:{run_id}").items()}
        order = cast(list[str], fx.lrange(f"fxorder:{run_id}", 0, -1))
        figures.raw_executions += sum(raw.values())
        figures.effects += len(order)
        events = saga.events(run_id)
        expired = state.error is not None and state.error.type == "DeadlineExceeded"
        undoable = GROUP_UNDOABLE if run.saga == "chaosgroup" else UNDOABLE
        leaked = _check_ledger(run_id, state, _stages(run.saga, state.definition_version), undoable, order, expired)
        if leaked:
            why = "its deadline passed" if expired else f"{state.error.name if state.error else '?'} gave up"
            figures.leaked.append(f"run {run_id}: {', '.join(leaked)} acted, never committed, never undone ({why})")
        if run.deadline is not None:
            # a step holds past the deadline before the last step: the run cannot complete
            assert expired and state.status.value == "compensated", f"{run_id}: deadline run ended {state}"
            exceeded = [e for e in events if e["type"] == "saga.deadline_exceeded"]
            assert len(exceeded) == 1, f"{run_id}: {len(exceeded)} saga.deadline_exceeded events"
            assert run_id not in dead, f"{run_id}: past its deadline but dead-lettered"
            figures.expired += 1
        else:
            assert not expired, f"{run_id}: no deadline, yet {state.error}"
        if state.status.value == "completed":
            figures.completed += 1
            figures.grouped_completed += run.saga == "chaosgroup"
            assert run_id not in dead, f"{run_id}: completed but dead-lettered"
        else:
            figures.compensated += 1
            if not expired:
                gave_up.add(run_id)
                assert run_id in dead and dead[run_id]["kind"] == "forward", f"{run_id}: gave up but no dead letter"
            if "permanent_at" in run.payload:
                assert state.error is not None and state.error.name == run.payload["permanent_at"]
        if run.saga == "chaos":
            _check_linear(run_id, state, order, expired)
        for e in events:
            figures.parked += e["type"] == "saga.parked"
            if e["type"] == "saga.resumed":
                figures.resumes += 1
                at = parse_iso(e["at"])
                before = [k for k in kills if k <= at]
                if before:
                    figures.recover_seconds.append(at - before[-1])
    assert set(dead) <= set(started) | set(dead), "dead letters of unknown runs"
    assert {rid for rid in dead if rid in started} == gave_up, "dead letters are not exactly the runs that gave up"


def _check_ledger(
    run_id: str,
    state: SagaState,
    stages: tuple[tuple[str, ...], ...],
    undoable: frozenset[str],
    order: list[str],
    expired: bool,
) -> list[str]:
    """The effects of one run, stage by stage (the members of a group in any order among
    themselves): each applied once; forward effects stage after stage, each stage whole before
    the next; compensations in reverse stage order, each after its step's effect; a completed
    run has every forward effect and no compensation; a compensated run has undone every
    effect of an undoable step — and undid nothing else, but a step running alone when the
    deadline passed or a group member whose attempt began (either may have acted: the product
    compensates them unseen).

    Returns the members of a parallel group that acted, never committed and were never undone
    (the product bug the test reports: see ``Figures.leaked``); any other effect left undone
    fails here."""
    rank = {name: k for k, stage in enumerate(stages) for name in stage}
    assert len(order) == len(set(order)), f"{run_id}: an effect applied twice: {order}"
    forward = [w.removeprefix("forward:") for w in order if w.startswith("forward:")]
    undo = [w.removeprefix("compensation:") for w in order if w.startswith("compensation:")]
    assert len(forward) + len(undo) == len(order) and set(forward) | set(undo) <= set(rank), f"{run_id}: {order}"
    ranks = [rank[name] for name in forward]
    assert ranks == sorted(ranks), f"{run_id}: forward effects out of stage order: {order}"
    missing = [name for stage in stages[: max(ranks, default=0)] for name in stage if name not in forward]
    assert not missing, f"{run_id}: a stage acted before {missing} of an earlier stage: {order}"
    ranks = [rank[name] for name in undo]
    assert ranks == sorted(ranks, reverse=True), f"{run_id}: compensations out of reverse stage order: {order}"
    late = [n for n in undo if n in forward and order.index(f"compensation:{n}") < order.index(f"forward:{n}")]
    assert not late, f"{run_id}: {late} undone before their effect: {order}"
    assert set(undo) <= undoable, f"{run_id}: a step without a compensation undone: {order}"
    committed = {c.name for c in state.checkpoints}
    assert committed <= set(forward), f"{run_id}: a step committed without its effect: {order}, {committed}"
    if state.status.value == "completed":
        assert sorted(forward) == sorted(rank) and not undo, f"{run_id}: completed with effects {order}"
        return []
    undone = [name for name in forward if name in undoable and name not in undo]
    leaked = [name for name in undone if len(stages[rank[name]]) > 1 and name not in committed]
    unbalanced = [name for name in undone if name not in leaked]
    assert not unbalanced, f"{run_id}: {unbalanced} acted and were never undone: {order}, committed {committed}"
    running = state.error.name if expired and state.error is not None else ""
    alone = {running} if running in rank and len(stages[rank[running]]) == 1 else set()
    steps = [name for stage in stages for name in stage]
    began = {steps[i] for i in state.began}  # members the unwind found begun: maybe killed before acting
    unseen = set(undo) - set(forward) - alone - began
    assert not unseen, f"{run_id}: {unseen} undone but never acted: {order}"
    return leaked


def _check_linear(run_id: str, state: SagaState, order: list[str], expired: bool) -> None:
    """The 5-step saga's compensations are exactly its committed undoable steps', newest first
    (after the step that was running at its deadline, compensated too: it may have acted)."""
    undo = [w for w in order if w.startswith("compensation:")]
    if state.status.value == "completed":
        return
    committed = [c.name for c in state.checkpoints]
    expected_undo = [f"compensation:{s}" for s in reversed(committed) if s in UNDOABLE]
    running = state.error.name if expired and state.error is not None else ""
    if running and undo[:1] == [f"compensation:{running}"] and running not in committed:
        expected_undo.insert(0, f"compensation:{running}")
    assert undo == expected_undo, f"{run_id}: compensations {undo}, expected {expected_undo}"


@dataclass
class Backlog:
    """What the backlog case saw: runs, retries, and resumes by run and reason; with a death, the
    attempt that was running when its worker was killed and the runs whose messages it held."""

    runs: int = 0
    retries: int = 0
    seconds: float = 0.0
    #: run id -> the reasons of its resumes
    resumed: dict[str, list[str]] = field(default_factory=dict)
    #: the run whose attempt was running at the kill ('' when the kill fell between two bodies)
    killed_attempt: str = ""
    #: runs with a message the killed worker had taken and not acknowledged (prefetched, a
    #: retry's countdown, the running attempt's): lost with it, until visibility_timeout
    held: set[str] = field(default_factory=set)

    def causes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reasons in self.resumed.values():
            for reason in reasons:
                cause = policy.resume_cause(reason)
                counts[cause] = counts.get(cause, 0) + 1
        return counts

    def report(self, what: str) -> str:
        death = (
            f"; killed attempt: {'1' if self.killed_attempt else 'none'}, runs with a message the dead worker held: "
            f"{len(self.held)}"
            if self.held or self.killed_attempt
            else ""
        )
        return (
            f"backlog {what}: {self.runs} runs on one slot, {self.retries} retries, drained in {self.seconds:.1f}s; "
            f"{sum(map(len, self.resumed.values()))} resumes over {len(self.resumed)} runs {self.causes()}{death}"
        )


#: The backlog case's timing: a short lease and watchdog interval (a retry waits in the queue far
#: longer than a lease), and a dispatch timeout longer than the whole backlog takes to drain.
BACKLOG_LEASE = 1.0
BACKLOG_DISPATCH_TIMEOUT = 20.0


def run_backlog(runs: int, *, kill: bool) -> Backlog:
    """Start ``runs`` runs of the backlog saga at once on one worker with one slot; with
    ``kill``, SIGKILL that worker once a third of them completed (while an attempt runs) and
    start another. Waits for every run to complete and returns what it saw."""
    with RedisServer() as server:
        settings = Settings(
            redis_url=server.url,
            broker_url=server.url,
            lease_seconds=BACKLOG_LEASE,
            watchdog_interval=0.2,
            dispatch_timeout=BACKLOG_DISPATCH_TIMEOUT,
            metrics_port=0,
        )
        log = Path(server.dir) / "backlog.log"
        worker = WorkerProcess("tests.chaos.app", settings, name="backlog", concurrency=1, cwd=ROOT, log=log)
        figures = Backlog(runs=runs)
        with configured(default_registry(), settings, app), worker:
            t0 = time.monotonic()
            run_ids = [backlog.start({"n": n}) for n in range(runs)]
            if kill:
                _kill_mid_backlog(worker, run_ids, server.url, figures)
            for run_id in run_ids:
                state = backlog.wait(run_id, timeout=120 + BACKLOG_DISPATCH_TIMEOUT)
                assert state.status.value == "completed", f"{run_id} ended {state.status.value}"
            figures.seconds = time.monotonic() - t0
            for run_id in run_ids:
                events = backlog.events(run_id)
                assert backlog.rebuild(run_id) == backlog.get(run_id), f"{run_id}: rebuild differs"
                figures.retries += sum(e["type"] == "step.retrying" for e in events)
                reasons = [str(e["reason"]) for e in events if e["type"] == "saga.resumed"]
                if reasons:
                    figures.resumed[run_id] = reasons
        return figures


def _kill_mid_backlog(worker: WorkerProcess, run_ids: list[str], broker_url: str, figures: Backlog) -> None:
    """SIGKILL the worker while an attempt runs, a third of the way through the backlog, then
    note which attempt it was running and which runs' messages it held, and start another."""

    def running() -> bool:
        done = sum(backlog.get(run_id).status.value == "completed" for run_id in run_ids)
        return done >= len(run_ids) // 3 and any(_running(run_id) for run_id in run_ids)

    wait_for(running, timeout=60, what="a third of the backlog done, an attempt running")
    worker.kill()  # SIGKILL, then wait until the broker dropped its connections
    figures.killed_attempt = next((run_id for run_id in run_ids if _running(run_id)), "")
    with redis.Redis.from_url(broker_url, decode_responses=True) as broker:
        # acks are late: every message the worker had taken is still in kombu's unacked hash
        for raw in broker.hvals("unacked"):
            message = json.loads(raw)[0]
            figures.held.add(message["headers"]["root_id"])  # a run's tasks have its id as root id
    worker.start()


def _running(run_id: str) -> bool:
    """Whether the last thing that happened at the run's cursor is an attempt that began (and
    has neither committed nor scheduled a retry)."""
    events = backlog.events(run_id)
    return bool(events) and events[-1]["type"] == "step.started"
