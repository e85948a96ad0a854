"""The Celery glue: the task that runs one delivery of a step or compensation, and dispatch.

One delivery goes: ``begin`` (dedup, lease, fencing token) -> body, with the lease renewed by a
heartbeat -> ``commit`` of the transition the state machine decided -> dispatch of the next
task. A retry records a ``step.retrying`` event and re-sends the task with a countdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from . import metrics
from . import state as sm
from .errors import DefinitionMismatch, InvalidPayload, PermanentError, StoreUnavailable
from .state import Direction, SagaState, Status

if TYPE_CHECKING:
    from .definition import Saga, Step

logger = logging.getLogger("saga")

#: Celery options of every saga task: at-least-once delivery, no result backend.
TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "max_retries": None,  # the saga counts attempts itself, across redeliveries too
    "serializer": "json",
}


def register_task(saga: Saga, step: Step, direction: Direction) -> Any:
    """Register the Celery task that runs ``step`` in ``direction`` on the saga's app."""
    name = step.task_name if direction is Direction.FORWARD else step.compensation_task_name

    def run(task: Any, run_id: str, attempt: int = 1) -> None:
        execute(saga, step, direction, run_id, attempt)

    run.__name__ = name.replace(".", "_").replace("-", "_")
    what = "Compensation of step" if direction is Direction.COMPENSATION else "Step"
    run.__doc__ = f"{what} {step.name!r} of saga {saga.name!r}."
    return saga.app.task(name=name, **TASK_OPTIONS)(run)


def connect_for_app(signal: Any, app: Any, handler: Any) -> None:
    """Connect ``handler`` to a Celery worker signal, for the workers of ``app`` only (the
    signal's sender, a worker or its consumer, carries its app)."""

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is app:
            handler(**kwargs)

    signal.connect(receiver, weak=False)


def _queue(saga: Saga, direction: Direction) -> str:
    s = saga.settings
    return s.step_queue if direction is Direction.FORWARD else s.compensation_queue


def send(saga: Saga, step: Step, direction: Direction, run_id: str, attempt: int = 1,
         countdown: float | None = None) -> None:
    """Publish one task message for a run (run id first, so Flower finds it by id)."""
    options: dict[str, Any] = {}
    queue = _queue(saga, direction)
    if queue:
        options["queue"] = queue
    if countdown:
        options["countdown"] = countdown
    kwargs = {"attempt": attempt} if attempt != 1 else {}
    step.task_for(direction).apply_async(args=(run_id,), kwargs=kwargs, **options)


def dispatch(saga: Saga, state: SagaState) -> bool:
    """Send the task at the run's cursor: a forward step, a compensation, or nothing if terminal.

    A broker that cannot be reached is logged, not raised: the run is already committed, and the
    watchdog sends its step once ``SAGA_DISPATCH_TIMEOUT`` passes. Returns whether a task was sent.
    """
    if state.status.terminal:
        return False
    step = saga.steps[state.current_step]
    try:
        send(saga, step, state.direction, state.id)
    except (OperationalError, OSError) as exc:
        run_logger(state.id, saga.name, step.name).error(
            "could not send the next task (%s); the run is saved and a worker's watchdog will send it "
            "once the broker answers", exc)
        return False
    return True


class RunLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Log lines that carry run id, saga and step: in the text, and as record attributes
    (``%(run_id)s``, ``%(saga)s``, ``%(step)s``) for structured formatters."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        e = dict(self.extra or {})
        kwargs["extra"] = {**e, **kwargs.get("extra", {})}
        return f"[run={e.get('run_id')} saga={e.get('saga')} step={e.get('step')}] {msg}", kwargs


def run_logger(run_id: str, saga: str, step: str) -> RunLog:
    """A logger whose lines carry the run's identity."""
    return RunLog(logger, {"run_id": run_id, "saga": saga, "step": step})


class Heartbeat:
    """Renews the leases of the bodies running in this process, every third of a lease.

    One daemon thread per process, started on first use (and again after a fork).
    """

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], tuple[Any, int, RunLog]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    def hold(self, store: Any, run_id: str, token: str, lease_ms: int, log: RunLog) -> None:
        """Keep renewing ``run_id``'s lease while ``token`` holds it."""
        with self._lock:
            self._held[(run_id, token)] = (store, lease_ms, log)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="saga-heartbeat", daemon=True).start()

    def release(self, run_id: str, token: str) -> None:
        """Stop renewing."""
        with self._lock:
            self._held.pop((run_id, token), None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                held = list(self._held.items())
            interval = min((ms for _, (_, ms, _) in held), default=3000) / 3000
            for (run_id, token), (store, ms, log) in held:
                try:
                    if not store.renew(run_id, token, ms):
                        log.warning("lease lost while the body runs; its commit will be refused")
                        self.release(run_id, token)
                except StoreUnavailable as exc:
                    log.warning("heartbeat could not renew the lease: %s", exc)
            self._wake.wait(interval)


heartbeat = Heartbeat()


def execute(saga: Saga, step: Step, direction: Direction, run_id: str, attempt: int) -> None:
    """Run one delivery of ``step`` for ``run_id``. Never raises for a business failure:
    every outcome is committed to the store (or the commit is refused and logged)."""
    log = run_logger(run_id, saga.name, step.name)
    store = saga.store
    shape = saga.shape
    lease_ms = int(saga.settings.lease_seconds * 1000)
    if not isinstance(run_id, str) or not isinstance(attempt, int):
        log.error("malformed message %r (attempt %r): expected a run id string; dropped to the log",
                  run_id, attempt)
        return
    started = sm.started_event(run_id, shape, direction, step.index)
    begin = store.begin(run_id, direction.value, step.index, attempt, lease_ms, shape.fingerprint, started)
    state = begin.state
    if begin.outcome == "missing":
        log.error("no such run (expired or never started); message ignored")
        return
    assert state is not None
    if begin.outcome == "done":
        log.info("already committed: skipping the body (duplicate delivery)")
        if begin.extra == "1" and not state.status.terminal:
            dispatch(saga, state)  # make sure the run moves on; a duplicate is deduplicated too
        return
    if begin.outcome in ("busy", "stale"):
        log.info("%s: another attempt holds the run or its cursor moved on; skipping", begin.outcome)
        return
    if begin.outcome == "drift":
        fail_run(saga, state, step.name, DefinitionMismatch(
            f"run {run_id} was started with definition {begin.extra} of saga {saga.name!r}, this worker "
            f"has {shape.fingerprint}; deploy the same definition everywhere"))
        return
    token = begin.token
    attempt = begin.attempt
    if state.status is Status.PENDING and attempt == 1:
        metrics.run_started(saga.name)
    ctx_key = f"{run_id}:{step.name}:{direction.value}"
    from .definition import StepContext

    ctx = StepContext(run_id, saga.name, step.name, step.index, attempt, ctx_key, direction)
    heartbeat.hold(store, run_id, token, lease_ms, log)
    began = time.perf_counter()
    try:
        output = _run_body(step, direction, dict(state.payload), ctx)
    except Exception as exc:  # every failure of user code is recorded; none escapes to Celery
        heartbeat.release(run_id, token)
        _failed(saga, step, direction, state, token, attempt, exc, log, time.perf_counter() - began)
        return
    heartbeat.release(run_id, token)
    metrics.step_finished(saga.name, step.name, direction.value, time.perf_counter() - began, "succeeded")
    _succeeded(saga, step, direction, state, token, output, log)


def _run_body(step: Step, direction: Direction, payload: dict[str, Any], ctx: Any) -> sm.JSONObject | None:
    if direction is Direction.COMPENSATION:
        assert step.compensation is not None
        step.compensation(payload, ctx)
        return None
    output = step.fn(payload, ctx)
    if output is None:
        return None
    try:
        return sm.require_json_object(output, f"the return value of step {step.name!r}")
    except InvalidPayload as exc:
        raise PermanentError(str(exc)) from None


def _succeeded(saga: Saga, step: Step, direction: Direction, state: SagaState, token: str,
               output: sm.JSONObject | None, log: RunLog) -> None:
    shape = saga.shape
    if direction is Direction.FORWARD:
        moved = sm.decide_step_succeeded(state, shape, step.index, output)
    else:
        moved = sm.decide_compensation_succeeded(state, shape, step.index)
    result = saga.store.commit(state, moved, token=token, done_field=f"{direction.value}:{step.index}",
                               release=True)
    if not result.applied:
        log.warning("commit refused (%s): this attempt lost its lease or was superseded; result discarded",
                    result.reason)
        return
    if result.cancel and moved.state.status is Status.RUNNING:
        apply_cancel(saga, moved.state, result.cancel)
        return
    _moved(saga, moved.state)


def _moved(saga: Saga, state: SagaState) -> None:
    """After an applied commit: send the next task, or count the run as finished."""
    if state.status.terminal:
        metrics.run_finished(saga.name, state.status.value)
    else:
        dispatch(saga, state)


def _failed(saga: Saga, step: Step, direction: Direction, state: SagaState, token: str,
            attempt: int, exc: Exception, log: RunLog, seconds: float) -> None:
    shape = saga.shape
    permanent = isinstance(exc, PermanentError)
    retrying = not permanent and attempt <= step.max_retries
    metrics.step_finished(saga.name, step.name, direction.value, seconds, "retrying" if retrying else "failed")
    if retrying:
        delay = sm.retry_delay(attempt, step.retry_backoff, step.retry_backoff_max)
        event = sm.decide_retry(state, shape, direction, step.index, attempt, exc, delay)
        lease_ms = int((delay + saga.settings.lease_seconds) * 1000)
        if not saga.store.record(state.id, token, [event], f"backoff:{attempt + 1}", lease_ms):
            log.warning("lost the lease before recording a retry; leaving the run to its holder")
            return
        log.info("attempt %d failed (%s: %s); retrying in %.2fs", attempt, type(exc).__name__, exc, delay)
        send(saga, step, direction, state.id, attempt=attempt + 1, countdown=delay)
        return
    log.error("gave up after %d attempt(s): %s: %s", attempt, type(exc).__name__, exc)
    if direction is Direction.FORWARD:
        moved, entry = sm.decide_step_gave_up(state, shape, step.index, exc, attempt)
    else:
        moved, entry = sm.decide_compensation_gave_up(state, shape, step.index, exc, attempt)
    result = saga.store.commit(state, moved, token=token, release=True, dead_entry=entry)
    if not result.applied:
        log.warning("commit of the failure refused (%s); result discarded", result.reason)
        return
    _moved(saga, moved.state)


def apply_cancel(saga: Saga, state: SagaState, reason: str) -> bool:
    """Commit the cancellation of a run no attempt is running, and dispatch its first
    compensation. False when an attempt holds a live lease (or the run moved meanwhile)."""
    moved = sm.decide_cancel(state, saga.shape, reason)
    result = saga.store.commit(state, moved, idle=True)
    if result.applied:
        run_logger(state.id, saga.name, "").warning("cancelled: %s", reason)
        _moved(saga, moved.state)
    return result.applied


def fail_run(saga: Saga, state: SagaState, step_name: str, error: Exception) -> bool:
    """End a run that cannot be trusted to move: ``failed``, with a dead letter saying why."""
    moved, entry = sm.decide_fail(state, step_name, error)
    result = saga.store.commit(state, moved, dead_entry=entry)
    run_logger(state.id, saga.name, step_name).error("run failed: %s", error)
    if result.applied:
        _moved(saga, moved.state)
    return result.applied
