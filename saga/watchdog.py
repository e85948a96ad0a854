"""The watchdog: finds runs that nothing moves any more and resumes them.

A run needs resuming when the attempt at its cursor lost its lease without committing (a killed
worker), or a transition was committed but the next task was never published (a crash between
commit and publish, a broker that lost the message). Every unfinished run has a deadline in the
store's ``active`` index; the watchdog, a thread in each worker with one elected scanner at a
time, takes the runs past their deadline and asks :func:`saga.policy.triage` what to do.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from . import policy
from .engine import Runtime, resume
from .errors import SagaError, StoreUnavailable
from .state import SagaState
from .store import RedisStore

logger = logging.getLogger(__name__)


class Watchdog:
    """Resumes stalled runs of the sagas ``runtimes()`` returns, store by store.

    Runs as a daemon thread in each worker. Workers elect one scanner per store at a time
    through a lock in Redis that expires if its holder dies, so one worker alone recovers runs
    and several do not fight; each resume is itself atomic, so an overlap is harmless.
    ``dispatch_timeout`` is how long a run of a saga this process does not define is left alone.
    """

    def __init__(self, runtimes: Callable[[], Iterable[Runtime]], *, interval: float, dispatch_timeout: float) -> None:
        self.runtimes = runtimes
        self.interval = interval
        self.dispatch_timeout = dispatch_timeout
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
        by_store: dict[int, tuple[RedisStore, dict[str, Runtime]]] = {}
        for rt in self.runtimes():
            by_store.setdefault(id(rt.store), (rt.store, {}))[1][rt.name] = rt
        lock_ms = int(max(self.interval * 3, 2.0) * 1000)
        resumed = 0
        for store, known in by_store.values():
            try:  # one unreachable store must not keep the others from being watched
                if not store.hold_lock(store.global_keys.watchdog, self.owner, lock_ms):
                    continue
                due = store.due(time.time())
                for run_id, state in zip(due, store.snapshots(due), strict=True):
                    resumed += self._check(store, known, run_id, state)
            except StoreUnavailable as exc:
                logger.warning("watchdog: %s; will retry", exc)
        return resumed

    def _check(self, store: RedisStore, known: dict[str, Runtime], run_id: str, state: SagaState | None) -> int:
        rt = known.get(state.saga) if state is not None else None
        facts = policy.Liveness(known=rt is not None, lease_live=False, began=False)
        if rt is not None and state is not None and not state.status.terminal:
            progress = store.progress(run_id)
            facts = policy.Liveness(known=True, lease_live=progress.lease is not None, began=progress.attempt > 0)
        settings = rt.settings if rt is not None else None
        now = time.time()
        verdict = policy.triage(
            state,
            facts,
            now=now,
            lease_seconds=settings.lease_seconds if settings else self.dispatch_timeout,
            dispatch_timeout=settings.dispatch_timeout if settings else self.dispatch_timeout,
        )
        if isinstance(verdict, policy.Forget):
            store.forget_active(run_id)
            return 0
        if isinstance(verdict, policy.LookAgain):
            store.schedule(run_id, verdict.at)
            return 0
        assert rt is not None and state is not None  # triage resumes only a known, unfinished run
        try:
            return 1 if resume(rt, run_id, verdict.reason) else 0
        except SagaError as exc:
            rt.log(run_id, rt.step_name(state.current_step)).error("could not resume: %s", exc)
            store.schedule(run_id, now + rt.settings.dispatch_timeout)
            return 0
