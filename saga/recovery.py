"""Recovery: resume a run from its last checkpoint, and the watchdog that finds runs to resume.

A run needs resuming when nothing moves it any more: the attempt at its cursor lost its lease
without committing (a killed worker), or a transition was committed but the next task was never
published (a crash between commit and publish, a broker that lost the message). Every unfinished
run has a deadline in the store's ``active`` index; the watchdog, a thread in each worker with
one elected scanner at a time, resumes runs past their deadline that hold no live lease.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from . import metrics
from .errors import CheckpointCorrupted, DefinitionMismatch, SagaError, StoreUnavailable
from .state import SagaState, parse_iso, payload_hash, resumed_event
from .tasks import connect_for_app, dispatch, fail_run, run_logger

if TYPE_CHECKING:
    from .definition import Saga
    from .store import RedisStore

logger = logging.getLogger("saga.recovery")


def checkpoint_problem(state: SagaState) -> str | None:
    """Why the run's last checkpoint does not verify against its payload, or None if it does."""
    if not state.checkpoints:
        return None
    last = state.checkpoints[-1]
    actual = payload_hash(state.payload)
    if last.hash != actual:
        return (f"checkpoint of step {last.step} ({last.name}) does not match its payload: hash "
                f"{last.hash[:12]}… but the stored payload hashes to {actual[:12]}…")
    return None


def resume(saga: Saga, run_id: str, reason: str) -> SagaState | None:
    """Resume ``run_id`` at its cursor, unless something is moving it already.

    Verifies the last checkpoint's hash first (a corrupt one fails the run, with a dead letter),
    refuses a run started under another definition, appends ``saga.resumed`` with a new fencing
    token (so a late attempt of the old lease cannot commit), then dispatches the task at the
    cursor. Returns the state resumed from, or None when the run was not resumed.
    """
    store = saga.store
    state = store.get(run_id)
    if state.status.terminal:
        store.forget_active(run_id)
        return None
    step_name = _cursor_name(saga, state)
    log = run_logger(run_id, saga.name, step_name)
    if store.meta(run_id).get("fingerprint") != saga.shape.fingerprint:
        fail_run(saga, state, step_name, DefinitionMismatch(
            f"run {run_id} was started under another definition of saga {saga.name!r}; "
            "deploy the same definition everywhere"))
        return None
    problem = checkpoint_problem(state)
    if problem:
        fail_run(saga, state, step_name, CheckpointCorrupted(problem + "; not resumed"))
        return None
    event = resumed_event(state, saga.shape, reason)
    ok, detail = store.note(run_id, [event], expected_version=state.version, require_idle=True, fence=True)
    if not ok:
        log.info("not resumed (%s): the run is moving", detail)
        return None
    store.schedule(run_id, store.dispatch_timeout)
    dispatch(saga, state)
    metrics.resumed(saga.name, reason)
    log.warning("resumed from version %d (%s)", state.version, reason)
    return state


def _cursor_name(saga: Saga, state: SagaState) -> str:
    if 0 <= state.current_step < len(saga.steps):
        return saga.steps[state.current_step].name
    return ""


class Watchdog:
    """Finds stalled runs of the sagas defined in this process and resumes them.

    Runs as a daemon thread in each worker. Workers elect one scanner at a time through a lock
    in Redis that expires if its holder dies, so one worker alone recovers runs and several do
    not fight; each resume is itself atomic, so an overlap is harmless.
    """

    def __init__(self, interval: float, lease_seconds: float) -> None:
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start scanning in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="saga-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop scanning."""
        self._stop.set()

    def _loop(self) -> None:
        while True:  # scan at once on start-up: a fresh worker may be replacing a dead one
            try:
                self.scan()
            except Exception:
                logger.exception("watchdog scan failed; retrying")
            if self._stop.wait(self.interval):
                return

    def scan(self) -> int:
        """One pass: resume every due run this process can resume. Returns how many it resumed."""
        from .definition import sagas

        resumed = 0
        by_store: dict[int, tuple[RedisStore, dict[str, Saga]]] = {}
        for s in sagas():
            by_store.setdefault(id(s.store), (s.store, {}))[1][s.name] = s
        lock_ms = int(max(self.interval * 3, 2.0) * 1000)
        for store, known in by_store.values():
            try:  # one unreachable store must not keep the others from being watched
                if not store.hold_lock("watchdog", self.owner, lock_ms):
                    continue
                due = store.due()
                for run_id, state in zip(due, store.snapshots(due), strict=True):
                    resumed += self._check(store, known, run_id, state)
            except StoreUnavailable as exc:
                logger.warning("watchdog: %s; will retry", exc)
        return resumed

    def _check(self, store: RedisStore, known: dict[str, Saga], run_id: str, state: SagaState | None) -> int:
        if state is None or state.status.terminal:
            store.forget_active(run_id)
            return 0
        saga = known.get(state.saga)
        if saga is None:  # another deployment's saga: look again later
            store.schedule(run_id, store.dispatch_timeout)
            return 0
        if store.lease(run_id) is not None:
            store.schedule(run_id, self.lease_seconds)
            return 0
        began = int(store.meta(run_id).get("attempt", "0")) > 0
        if not began:  # sent but not started yet: a queue may simply be long
            waited = time.time() - parse_iso(state.updated_at)
            if waited < store.dispatch_timeout:
                store.schedule(run_id, store.dispatch_timeout - waited)
                return 0
        reason = "lease expired" if began else "next step never started"
        try:
            return 1 if resume(saga, run_id, reason) else 0
        except SagaError as exc:
            run_logger(run_id, saga.name, _cursor_name(saga, state)).error("could not resume: %s", exc)
            store.schedule(run_id, store.dispatch_timeout)
            return 0


def install_watchdog(app: Any) -> None:
    """Start a watchdog in every worker of ``app`` when it is ready."""
    from celery import signals

    def on_ready(**_: Any) -> None:
        from .settings import get_settings

        settings = get_settings()
        if settings.watchdog_interval > 0:
            dog = Watchdog(settings.watchdog_interval, settings.lease_seconds)
            dog.start()
            signals.worker_shutting_down.connect(lambda **kw: dog.stop(), weak=False)

    connect_for_app(signals.worker_ready, app, on_ready)
