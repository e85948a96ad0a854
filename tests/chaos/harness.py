"""Drives the chaos suite: its own Redis (AOF, fsync always), prefork workers as subprocesses,
kills and restarts, then checks every run against the effects ledger.

With TEST_STORE=cluster the store is a 3-master Redis Cluster of its own (AOF) and the Redis
restart is a master's; the broker and the effects ledger stay on the plain Redis."""

from __future__ import annotations

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

from saga import SagaError, Settings
from saga.registry import default_registry
from saga.state import parse_iso
from saga.testing import (
    RedisCluster,
    RedisServer,
    configured,
    process_children,
    start_worker_process,
    stop_process_group,
    worker_env,
)
from tests.chaos.app import STEPS, UNDOABLE, app, chaos, declare

ROOT = Path(__file__).resolve().parents[2]


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
    by_version: dict[int, int] = field(default_factory=dict)
    recover_seconds: list[float] = field(default_factory=list)

    def report(self) -> str:
        rec = (
            f"median {statistics.median(self.recover_seconds):.1f}s, max {max(self.recover_seconds):.1f}s"
            if self.recover_seconds
            else "n/a"
        )
        return (
            f"chaos: {self.runs} runs ({self.completed} completed, {self.compensated} compensated); "
            f"kills: {self.kills_worker} workers + {self.kills_child} pool children; "
            f"{self.redis_restarts} Redis restart(s); raw executions {self.raw_executions} vs effects "
            f"{self.effects}; resumes {self.resumes}; time from kill to resume: {rec}; {self.deploys} deploys, "
            f"runs by version {dict(sorted(self.by_version.items()))}, {self.parked} parked on the way"
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
        """SIGKILL one pool child of a worker; its parent replaces it."""
        for wid in random.sample(sorted(self.procs), len(self.procs)):
            children = process_children(self.procs[wid].pid)
            if children:
                os.kill(random.choice(children), signal.SIGKILL)
                return True
        return False

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


def _start(payload: dict[str, Any], key: str) -> str:
    """Start a run (under the highest version declared here); a start that fails (Redis
    restarting) is retried with its key."""
    for _ in range(50):
        try:
            return chaos.start(payload, key=key)
        except (SagaError, OSError, ConnectionError) as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"could not start a run: {last}")


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
    started: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        payload: dict[str, Any] = {"p_transient": 0.15, "max_sleep": 0.4}
        if rng.random() < 0.15:
            payload["permanent_at"] = rng.choice(STEPS[1])
        run_id = _start(payload, key=f"chaos-{len(started)}")
        started[run_id] = payload
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
    for run_id in started:
        left = deadline - time.monotonic()
        state = chaos.wait(run_id, timeout=max(left, 0.1))
        assert state.status.value in ("completed", "compensated"), f"{run_id} ended {state.status.value}"
    _check(chaos, started, cluster, figures, kills)
    return figures


def _check(
    chaos: Any,
    started: dict[str, dict[str, Any]],
    cluster: Cluster,
    figures: Figures,
    kills: list[float],
) -> None:
    fx = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    dead = {d["run_id"]: d for d in chaos.store.dead_letters()}
    figures.runs = len(started)
    for run_id, payload in started.items():
        state = chaos.get(run_id)
        steps = STEPS[state.definition_version]
        figures.by_version[state.definition_version] = figures.by_version.get(state.definition_version, 0) + 1
        assert chaos.rebuild(run_id) == state, f"{run_id}: rebuild differs from the stored state"
        versions = [s.version for s in chaos.history(run_id)]
        assert versions == list(range(1, state.version + 1)), f"{run_id}: versions {versions}"
        raw = {k: int(v) for k, v in fx.hgetall(f"raw:{run_id}").items()}
        order = cast(list[str], fx.lrange(f"fxorder:{run_id}", 0, -1))
        figures.raw_executions += sum(raw.values())
        figures.effects += len(order)
        assert len(order) == len(set(order)), f"{run_id}: an effect applied twice: {order}"
        forward = [w for w in order if w.startswith("forward:")]
        undo = [w for w in order if w.startswith("compensation:")]
        if state.status.value == "completed":
            figures.completed += 1
            assert forward == [f"forward:{s}" for s in steps], f"{run_id}: effects {order}"
            assert not undo and run_id not in dead, f"{run_id}: completed but {undo} / dead-lettered"
        else:
            figures.compensated += 1
            committed = [c.name for c in state.checkpoints]
            expected_undo = [f"compensation:{s}" for s in reversed(committed) if s in UNDOABLE]
            assert undo == expected_undo, f"{run_id}: compensations {undo}, expected {expected_undo}"
            assert run_id in dead and dead[run_id]["kind"] == "forward", f"{run_id}: gave up but no dead letter"
            if "permanent_at" in payload:
                assert state.error is not None and state.error.name == payload["permanent_at"]
        for e in chaos.events(run_id):
            figures.parked += e["type"] == "saga.parked"
            if e["type"] == "saga.resumed":
                figures.resumes += 1
                at = parse_iso(e["at"])
                before = [k for k in kills if k <= at]
                if before:
                    figures.recover_seconds.append(at - before[-1])
    assert set(dead) <= set(started) | set(dead), "dead letters of unknown runs"
    gave_up = {rid for rid in started if chaos.get(rid).status.value == "compensated"}
    assert {rid for rid in dead if rid in started} == gave_up, "dead letters are not exactly the runs that gave up"
