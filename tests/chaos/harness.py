"""Drives the chaos suite: its own Redis (AOF, fsync always), prefork workers as subprocesses,
kills and restarts, then checks every run against the effects ledger."""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from saga.state import parse_iso
from saga.testing import RedisServer, start_worker_process, stop_process_group

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
    recover_seconds: list[float] = field(default_factory=list)

    def report(self) -> str:
        rec = (f"median {statistics.median(self.recover_seconds):.1f}s, max {max(self.recover_seconds):.1f}s"
               if self.recover_seconds else "n/a")
        return (f"chaos: {self.runs} runs ({self.completed} completed, {self.compensated} compensated); "
                f"kills: {self.kills_worker} workers + {self.kills_child} pool children; "
                f"{self.redis_restarts} Redis restart(s); raw executions {self.raw_executions} vs effects "
                f"{self.effects}; resumes {self.resumes}; time from kill to resume: {rec}")


class Cluster:
    """A Redis and a set of worker processes that can be killed and replaced."""

    def __init__(self, workers: int = 2, lease: float = 2.0) -> None:
        self.redis = RedisServer(appendonly=True)
        self.lease = lease
        self.size = workers
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.next_id = 0
        self.logdir = Path(self.redis.dir)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
        env.update(SAGA_REDIS_URL=self.redis.url, SAGA_BROKER_URL=self.redis.url,
                   SAGA_LEASE_SECONDS=str(self.lease), SAGA_WATCHDOG_INTERVAL="0.5",
                   SAGA_DISPATCH_TIMEOUT="15", SAGA_METRICS_PORT="0", PYTHONPATH=str(ROOT))
        return env

    def start(self) -> None:
        self.redis.start()
        for _ in range(self.size):
            self.add_worker()

    def add_worker(self) -> int:
        wid = self.next_id
        self.next_id += 1
        self.procs[wid] = start_worker_process("tests.chaos.app", self.env(), name=f"chaos{wid}", cwd=ROOT,
                                               log=self.logdir / f"worker{wid}.log")
        return wid

    def kill_worker(self) -> None:
        """SIGKILL a whole worker (parent and pool children) and start a replacement."""
        wid = random.choice(sorted(self.procs))
        stop_process_group(self.procs.pop(wid), signal.SIGKILL)
        self.add_worker()

    def kill_child(self) -> bool:
        """SIGKILL one pool child of a worker; its parent replaces it."""
        for wid in random.sample(sorted(self.procs), len(self.procs)):
            children = _children(self.procs[wid].pid)
            if children:
                os.kill(random.choice(children), signal.SIGKILL)
                return True
        return False

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process_group(proc, signal.SIGKILL)
        self.procs.clear()
        self.redis.close()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def run_chaos(seconds: float, rate: float = 2.0, seed: int | None = None) -> Figures:
    """Start runs for ``seconds`` while killing workers and restarting Redis; check every run.

    Raises AssertionError with a precise message on the first broken invariant.
    """
    rng = random.Random(seed)
    cluster = Cluster()
    figures = Figures()
    cluster.start()
    from saga import RedisStore, SagaError
    from tests.chaos.app import STEPS, app, chaos

    # this process only starts and inspects runs: point the saga's store and app at the cluster
    saved = (chaos._store, app.conf.broker_url)
    app.conf.broker_url = cluster.redis.url
    app._after_fork()  # forget pooled broker connections
    chaos._store = RedisStore(cluster.redis.url, dispatch_timeout=15)
    plan: list[tuple[float, str]] = sorted(
        [(seconds * f, "kill_worker") for f in (0.2, 0.5, 0.8)]
        + [(seconds * f, "kill_child") for f in (0.35, 0.65)]
        + [(seconds * 0.45, "restart_redis")]
    )
    kills: list[float] = []
    started: dict[str, dict[str, Any]] = {}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            payload: dict[str, Any] = {"p_transient": 0.15, "max_sleep": 0.4}
            if rng.random() < 0.15:
                payload["permanent_at"] = rng.choice(STEPS)
            key = f"chaos-{len(started)}"
            for _ in range(50):  # a start that fails (Redis restarting) is retried with its key
                try:
                    run_id = chaos.start(payload, key=key)
                    break
                except (SagaError, OSError, ConnectionError) as exc:
                    last = exc
                    time.sleep(0.2)
            else:
                raise AssertionError(f"could not start a run: {last}")
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
                    cluster.redis.restart()
                    figures.redis_restarts += 1
            time.sleep(rng.expovariate(rate))
        deadline = time.monotonic() + 90
        for run_id in started:
            left = deadline - time.monotonic()
            state = chaos.wait(run_id, timeout=max(left, 0.1))
            assert state.status.value in ("completed", "compensated"), f"{run_id} ended {state.status.value}"
        _check(chaos, started, STEPS, cluster, figures, kills)
        return figures
    finally:
        cluster.stop()
        chaos._store, app.conf.broker_url = saved
        app._after_fork()


def _check(chaos: Any, started: dict[str, dict[str, Any]], steps: tuple[str, ...], cluster: Cluster,
           figures: Figures, kills: list[float]) -> None:
    r = redis.Redis.from_url(cluster.redis.url, decode_responses=True)
    dead = {d["run_id"]: d for d in chaos.store.dead_letters()}
    figures.runs = len(started)
    for run_id, payload in started.items():
        state = chaos.get(run_id)
        assert chaos.rebuild(run_id) == state, f"{run_id}: rebuild differs from the stored state"
        versions = [s.version for s in chaos.history(run_id)]
        assert versions == list(range(1, state.version + 1)), f"{run_id}: versions {versions}"
        raw = {k: int(v) for k, v in r.hgetall(f"raw:{run_id}").items()}
        order = r.lrange(f"fxorder:{run_id}", 0, -1)
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
            expected_undo = [f"compensation:{s}" for s in reversed(committed) if s != steps[-1]]
            assert undo == expected_undo, f"{run_id}: compensations {undo}, expected {expected_undo}"
            assert run_id in dead and dead[run_id]["kind"] == "forward", f"{run_id}: gave up but no dead letter"
            if "permanent_at" in payload:
                assert state.error is not None and state.error.name == payload["permanent_at"]
        for e in chaos.events(run_id):
            if e["type"] == "saga.resumed":
                figures.resumes += 1
                at = parse_iso(e["at"])
                before = [k for k in kills if k <= at]
                if before:
                    figures.recover_seconds.append(at - before[-1])
    assert set(dead) <= set(started) | set(dead), "dead letters of unknown runs"
    gave_up = {rid for rid in started if chaos.get(rid).status.value == "compensated"}
    assert {rid for rid in dead if rid in started} == gave_up, "dead letters are not exactly the runs that gave up"
