"""The watchdog: finds runs that nothing moves any more and resumes them.

A run needs resuming when the attempt at its cursor lost its lease without committing (a killed
worker), or a transition was committed but the next task was never published (a crash between
commit and publish, a broker that lost the message). Every unfinished run has a deadline in the
store's ``active`` index; the watchdog, a thread in each worker with one elected scanner at a
time, takes the runs past their deadline and asks :func:`saga.policy.triage` what to do.

While it runs, each worker's metrics endpoint reads two gauges of its list at scrape time:
``saga_active_runs`` (how many runs it watches) and ``saga_stuck_run_seconds`` (how long the
most overdue one has gone past its progress deadline with nothing moving it). The elected
scanner reschedules every run it looks at, so the second stays near 0 unless runs are left
behind (a scan that keeps failing, more due runs than it takes).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from ..core import SagaState, policy, stages
from ..errors import SagaError, StorageFormatTooNew, StoreUnavailable
from ..settings import Settings
from ..store import RedisStore, lane_id
from . import metrics
from .commit import Runtime, StoredDefinition, cancel_now
from .log import run_logger
from .runs import expire, park, resume

#: (saga name, definition version) -> the runtime that moves its runs
Known = dict[tuple[str, int], Runtime]

logger = logging.getLogger(__name__)

#: How often the elected watchdog drops the listing entries of expired runs.
TIDY_SECONDS = 60.0


class Watchdog:
    """Resumes stalled runs of the sagas ``runtimes()`` returns, store by store.

    Runs as a daemon thread in each worker. Workers elect one scanner per store at a time
    through a lock in Redis that expires if its holder dies, so one worker alone recovers runs
    and several do not fight; each resume is itself atomic, so an overlap is harmless.
    ``settings`` time the runs of sagas this process does not define (and the scan interval).
    """

    def __init__(self, runtimes: Callable[[], Iterable[Runtime]], settings: Settings) -> None:
        self.runtimes = runtimes
        self.settings = settings
        self.interval = settings.watchdog_interval or 1.0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tidied: dict[int, float] = {}  # id(store) -> when to tidy it next (monotonic)

    def start(self) -> None:
        """Start scanning in a daemon thread, and have this process's metrics endpoint read the
        watchdog's gauges."""
        if self._thread is None:
            metrics.read_at_scrape("saga_active_runs", self.active_runs)
            metrics.read_at_scrape("saga_stuck_run_seconds", self.stuck_seconds)
            self._thread = threading.Thread(target=self._loop, name="saga-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop scanning (and stop reporting the watchdog's gauges)."""
        self._stop.set()
        metrics.read_at_scrape("saga_active_runs", None)
        metrics.read_at_scrape("saga_stuck_run_seconds", None)

    def _stores(self) -> list[RedisStore]:
        return list({id(rt.store): rt.store for rt in self.runtimes()}.values())

    def active_runs(self) -> int:
        """How many unfinished runs the watchdog watches, over its stores."""
        return sum(store.indexes.active_depth() for store in self._stores())

    def stuck_seconds(self) -> float:
        """How long the most overdue unfinished run has waited past its progress deadline, over
        the watchdog's stores (0 when none is overdue): two reads per store, none of them a
        scan."""
        return max((stuck_seconds(store, time.time()) for store in self._stores()), default=0.0)

    def _loop(self) -> None:
        while True:  # scan at once on start-up: a fresh worker may be replacing a dead one
            try:
                self.scan()
            except Exception:
                logger.exception("watchdog scan failed; retrying")
            if self._stop.wait(self.interval):
                return

    def scan(self) -> int:
        """One pass: resume every parked run this process can now move, and, if elected, triage
        every due run. Returns how many runs it resumed."""
        by_store: dict[int, tuple[RedisStore, Known]] = {}
        for rt in self.runtimes():
            by_store.setdefault(id(rt.store), (rt.store, {}))[1][(rt.name, rt.definition.version)] = rt
        lock_ms = int(max(self.interval * 3, 2.0) * 1000)
        resumed = 0
        for store, known in by_store.values():
            try:  # one unreachable store must not keep the others from being watched
                resumed += self._resume_parked(store, known)
                if not store.indexes.hold_lock(store.keyspace.global_keys.watchdog, self.owner, lock_ms):
                    continue
                due = store.indexes.due(time.time())
                for run_id, state in zip(due, store.reads.read_snapshots(due), strict=True):
                    if isinstance(state, StorageFormatTooNew):  # a newer saga's watchdog moves it
                        logger.error("watchdog: %s; left as it is", state)
                        store.indexes.schedule(run_id, time.time() + self.settings.dispatch_timeout)
                        continue
                    resumed += self._check(store, known, run_id, state)
                self._tidy(store, known)
            except StoreUnavailable as exc:
                logger.warning("watchdog: %s; will retry", exc)
        return resumed

    def _tidy(self, store: RedisStore, known: Known) -> None:
        """Now and then, drop the listing entries of finished runs whose keys have expired
        (under the longest retention any saga of this store has)."""
        now = time.monotonic()
        if now < self._tidied.get(id(store), 0.0):
            return
        self._tidied[id(store)] = now + TIDY_SECONDS
        everyone = [rt.settings for rt in known.values()] or [self.settings]
        retention = max(
            policy.finished_kept_seconds(s.retention_seconds, s.hot_retention_seconds, archived=bool(s.archive_url))
            for s in everyone
        )
        store.indexes.trim_finished(time.time() - retention)

    def _resume_parked(self, store: RedisStore, known: Known) -> int:
        resumed = 0
        for parked in store.indexes.parked():
            rt = known.get((parked.saga, parked.definition_version))
            if rt is None or rt.definition.shape.fingerprint != parked.fingerprint:
                continue
            try:
                resumed += 1 if resume(rt, parked.run_id, "definition available") else 0
            except SagaError as exc:
                rt.log(parked.run_id).error("could not resume a parked run: %s", exc)
        return resumed

    def _check(self, store: RedisStore, known: Known, run_id: str, state: SagaState | None) -> int:
        if state is None or state.status.terminal:
            store.indexes.forget_active(run_id)
            return 0
        rt = known.get((state.saga, state.definition_version))
        progress = store.reads.progress(run_id, self._lanes(rt, state))
        if rt is None:
            versions = [version for name, version in known if name == state.saga]
            missing = policy.missing_reason(state.saga, state.definition_version, versions)
        elif progress.fingerprint != rt.definition.shape.fingerprint:
            here = rt.definition.shape.fingerprint
            missing = policy.drift_reason(state.saga, state.definition_version, progress.fingerprint, here)
        else:
            missing = ""
        idle = progress.lease is None and not progress.parked
        facts = policy.Liveness(
            missing,
            lease_live=progress.lease is not None,
            began=progress.attempt > 0,
            parked=bool(progress.parked),
            lease_left=progress.lease_ms_left / 1000,
            cancel=progress.cancel,
            attempt=progress.attempt,
            # a retry (or a resume's message) waiting in the broker is watched by the dispatch
            # timeout, like a first attempt's: read the events only for a run nothing holds
            queued=self._queued(store, rt, state) if idle else None,
        )
        settings = rt.settings if rt is not None else self.settings
        now = time.time()
        verdict = policy.triage(
            state, facts, now=now, lease_seconds=settings.lease_seconds, dispatch_timeout=settings.dispatch_timeout
        )
        if isinstance(verdict, policy.Forget):
            store.indexes.forget_active(run_id)
            return 0
        if isinstance(verdict, policy.LookAgain):
            store.indexes.schedule(run_id, verdict.at)
            return 0
        if isinstance(verdict, policy.Expire | policy.CancelNow):
            mover = rt if rt is not None and not missing else self._stored(store, known, state)
            if mover is None:
                store.indexes.schedule(run_id, now + settings.dispatch_timeout)
                return 0
            # an attempt that began and is not waiting for its retry (a backoff, then the
            # broker) may have acted
            acted = facts.running and not (progress.lease or "").startswith("backoff:")
            if isinstance(verdict, policy.Expire):
                done = expire(mover, state, by_name=mover is not rt, undo_running=acted)
            else:
                done = cancel_now(mover, state, verdict.reason, undo_running=acted)
            if not done:
                store.indexes.schedule(run_id, now + 1.0)  # it moved meanwhile: look again soon
            return 0
        if isinstance(verdict, policy.Park):
            park(store, state, verdict.reason, run_logger(logger, run_id, state.saga, ""))
            store.indexes.schedule(run_id, now + settings.dispatch_timeout)
            return 0
        assert rt is not None  # triage resumes only a run this process can move
        try:
            return 1 if resume(rt, run_id, verdict.reason) else 0
        except SagaError as exc:
            rt.log(run_id, rt.step_name(state.current_step)).error("could not resume: %s", exc)
            store.indexes.schedule(run_id, now + rt.settings.dispatch_timeout)
            return 0

    @staticmethod
    def _queued(store: RedisStore, rt: Runtime | None, state: SagaState) -> policy.Queued | None:
        """The retry's or resume's message the run waits for, not begun since it was sent (see
        :func:`saga.policy.queued_since`), from the run's events: at a parallel group, of the
        members due at the cursor."""
        if rt is not None and rt.in_group(state.current_step):
            steps = stages.lanes_due(state, rt.definition.shape)
        else:
            steps = [state.current_step]
        if not steps:
            return None
        return policy.queued_since(store.reads.events(state.id), state.direction, steps)

    @staticmethod
    def _lanes(rt: Runtime | None, state: SagaState | None) -> list[str]:
        """The lanes whose leases and attempts tell whether a run at a parallel group moves: the
        members due at the cursor, or, for a group whose unwind has nothing left to send, its
        forward members (one may still be in flight)."""
        if rt is None or state is None or state.status.terminal or not rt.in_group(state.current_step):
            return []
        due = stages.lanes_due(state, rt.definition.shape)
        if not due:
            return list(rt.group_lanes(state))
        return [lane_id(state.direction.value, i) for i in due]

    @staticmethod
    def _stored(store: RedisStore, known: Known, state: SagaState) -> Runtime | None:
        """A runtime for a run whose definition no saga here has: its recorded shape, sent with
        the app of any saga on the same store (compensations then run by step name)."""
        shape = store.reads.shape(state.id)
        some = next(iter(known.values()), None)
        if shape is None or some is None:
            return None
        definition = StoredDefinition(state.saga, state.definition_version, shape, some.definition.app)
        return Runtime(definition, store, some.settings, some.heartbeat)


def stuck_seconds(store: RedisStore, now: float) -> float:
    """How long the run with the oldest progress deadline in ``store`` has been past it at
    ``now`` (0 when no deadline has passed)."""
    due = store.indexes.due(now, limit=1)
    at = store.indexes.deadline(due[0]) if due else None
    return max(0.0, now - at) if at is not None else 0.0
