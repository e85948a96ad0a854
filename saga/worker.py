"""What runs in a worker: a step's Celery task, the routing of each message, the worker hooks.

Each step's task is registered on first use (one per step name and app, shared by every
version of the saga) and hands each delivered message to :func:`route`, which finds the
definition the run started with and runs one delivery (:mod:`saga.engine`), or parks the run
when this process lacks it. :func:`hook_workers` makes a Celery app's workers run a watchdog,
an archiver (with ``SAGA_ARCHIVE_URL``) and the metrics endpoint. The state all this uses (the
tasks registered, the apps hooked, the settings and stores) lives in the :class:`Registry`.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

from . import archive as archive_tier
from .archive import ArchiveFeed
from .core import Direction, EventType, call_problem, decide, policy
from .engine import Watchdog, deliver, metrics, park, run_logger
from .errors import RunNotFound, StoreUnavailable
from .registry import Registry
from .transport import tasks

if TYPE_CHECKING:
    from .archive import Archiver

logger = logging.getLogger(__name__)
#: Registration of a task is check-then-set across threads.
_lock = threading.Lock()


def task_for(registry: Registry, app: Any, saga: str, step: str, direction: Direction) -> Any:
    """The Celery task of step ``step`` of ``saga`` in ``direction`` on ``app``, registered
    on first use; its messages are routed by :func:`route`, whatever the version."""
    name = tasks.task_name(saga, step, direction)
    known = registry.tasks_of(app)
    with _lock:
        if name not in known:
            what = "Step" if direction is Direction.FORWARD else "Compensation of step"

            def handle(run_id: str, attempt: int, version: int) -> tasks.Ending:
                return route(registry, saga, step, direction, run_id, attempt, version)

            doc = f"{what} {step!r} of saga {saga!r}."
            known[name] = tasks.register_task(app, name, handle, doc, partial(reject_message, registry))
        return known[name]


def reject_message(registry: Registry, task: str, why: str, run_id: str | None) -> None:
    """Report a malformed message rejected for ``task``: one log line, a count, and a
    ``saga.message_rejected`` event on the run it names, when that run exists."""
    metrics.poison_message(task)
    logger.error("rejected a message for %s, not requeued: %s", task, why)
    if run_id is None:
        return
    try:
        state = registry.store.reads.get(run_id)
        event = decide.note_event(state, EventType.SAGA_MESSAGE_REJECTED, task=task, reason=why)
        registry.store.note_events(state, [event])
    except (RunNotFound, StoreUnavailable):
        pass  # no such run, or no store now: the log line and the count say it


def route(
    registry: Registry, saga: str, step: str, direction: Direction, run_id: str, attempt: int, version: int
) -> tasks.Ending:
    """Route one delivered message to the definition its run started with (``version``), and
    say how it ended. Without that definition here, a compensation may still run by name for
    an operator's unwind (under the shape the run recorded); any other message parks the run."""
    log = run_logger(logger, str(run_id), saga, step)
    problem = call_problem(run_id, attempt, version)
    if problem:
        log.error("malformed message: %s; dropped to the log", problem)
        return tasks.skipped(f"malformed message: {problem}")
    definition = registry.find(saga, version)
    found = definition.find_step(step) if definition is not None else None
    if definition is not None and found is not None:
        return deliver(definition.runtime(), found, direction, run_id, attempt)
    rt = registry.get(saga).runtime()
    try:
        state = rt.store.reads.get(run_id)
    except RunNotFound:
        log.error("no such run (expired or never started); message ignored")
        return tasks.skipped("no such run")
    by_name = registry.compensation_named(saga, step) if direction is Direction.COMPENSATION else None
    shape = rt.store.reads.shape(run_id) if by_name is not None else None
    if by_name is not None and shape is not None:
        return deliver(registry.stored_runtime(saga, version, shape), by_name, direction, run_id, attempt, by_name=True)
    why = policy.missing_reason(saga, version, registry.versions(saga))
    if definition is not None:
        stored = rt.store.reads.progress(run_id).fingerprint
        why = policy.drift_reason(saga, version, stored, definition.shape.fingerprint)
    park(rt.store, state, why, log)
    return tasks.skipped(f"parked: {why}")


def watchdog(registry: Registry) -> Watchdog:
    """A watchdog over this registry's sagas (started by each worker; tests call ``scan()``)."""
    return Watchdog(registry.runtimes, registry.settings)


def hook_workers(registry: Registry, app: Any) -> None:
    """Once per Celery app: its workers run a watchdog and serve metrics, as this registry's
    settings say (``SAGA_WATCHDOG_INTERVAL``, ``SAGA_METRICS_PORT``; 0 turns either off)."""
    if not registry.first_hook(app):
        return
    folders: list[str] = []
    dogs: list[Watchdog | Archiver] = []  # each has start() and stop()

    def on_init(**_: Any) -> None:  # before the pool forks
        if registry.settings.metrics_port:
            folder = metrics.prepare_multiprocess()
            if folder:
                folders.append(folder)

    def on_ready(**_: Any) -> None:
        s = registry.settings
        if s.watchdog_interval > 0:
            dogs.append(watchdog(registry))
            dogs[-1].start()
        archive = registry.archive_for(s)
        if archive is not None and s.archiver:
            dogs.append(archive_tier.Archiver(registry.store, archive, s))
            dogs[-1].start()
        if s.metrics_port:
            reads = {
                "saga_dead_letters": registry.store.indexes.dead_letter_depth,
                "saga_parked_runs": registry.store.indexes.parked_depth,
            }
            lag = ArchiveFeed(registry.store).lag if s.archive_url else None
            auth = {"user": s.metrics_user, "password_file": s.metrics_password_file}
            metrics.serve(s.metrics_port, reads, lag, **auth)

    def on_stop(**_: Any) -> None:
        for dog in dogs:
            dog.stop()

    def on_child_exit(pid: int | None = None, **_: Any) -> None:
        metrics.mark_child_dead(pid)

    def on_shutdown(**_: Any) -> None:
        while folders:
            metrics.remove_folder(folders.pop())

    tasks.on_worker_signal(app, "worker_init", on_init)
    tasks.on_worker_signal(app, "worker_ready", on_ready)
    tasks.on_process_signal("worker_shutting_down", on_stop)
    tasks.on_process_signal("worker_process_shutdown", on_child_exit)
    tasks.on_process_signal("worker_shutdown", on_shutdown)
