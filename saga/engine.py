"""The engine: every commit a run goes through, and the task that follows it.

Starting, resuming, cancelling, failing, parking and unwinding a run, and each step's result
(:mod:`saga.delivery`), go through one function, :func:`commit_and_follow`: commit the
transition :mod:`saga.decide` chose, with the retention and watchdog deadline :mod:`saga.policy`
gives, then send the next task or count the run as finished.

The engine runs any saga definition that looks like :class:`SagaDefinition`; it never imports
the definition API, which sits above it. It needs a definition's name, version, shape and Celery
app only, and sends every task by name (``saga.<saga>.<step>[.compensate]``), so a run can also
be moved under the shape it recorded when it started (:class:`StoredDefinition`), e.g. unwound
by an operator after its definition was removed.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from . import decide, messages, metrics, policy, tasks
from .errors import BrokerUnavailable, CheckpointCorrupted, InvalidPayload, KeyConflict, SagaDefinitionError
from .heartbeat import Heartbeat
from .log import RunLog, run_logger
from .schema import PLAIN_COMMIT, CommitOptions, CommitResult, CreateOutcome, Message, ParkOutcome
from .settings import Settings
from .state import Direction, SagaState, Shape, Status, Transition
from .store import RedisStore
from .validate import cut, validated, validated_tags

logger = logging.getLogger(__name__)

#: Namespace of run ids derived from (saga, start key).
_KEY_NAMESPACE = uuid.UUID("5a6a0000-0000-4000-8000-000000000000")
#: The longest start key.
MAX_KEY = 1000


class SagaDefinition(Protocol):
    """What the engine needs of a saga definition."""

    @property
    def name(self) -> str:
        """The saga's name."""
        ...

    @property
    def version(self) -> int:
        """The definition's version; a run is moved by the version it started with."""
        ...

    @property
    def shape(self) -> Shape:
        """Step names and which can be undone (what a run's fingerprint is taken over)."""
        ...

    @property
    def app(self) -> Any:
        """The Celery app that sends the saga's tasks."""
        ...


@dataclass(frozen=True)
class StoredDefinition:
    """A run's definition as the run recorded it: enough to decide and send its tasks by name,
    with no step bodies (those come from whichever loaded version has a step of that name)."""

    name: str
    version: int
    shape: Shape
    app: Any


@dataclass(frozen=True)
class Runtime:
    """A saga definition bound to what it runs with in this process: one store, its settings,
    and the heartbeat that keeps its leases."""

    definition: SagaDefinition
    store: RedisStore
    settings: Settings
    heartbeat: Heartbeat

    @property
    def name(self) -> str:
        """The saga's name."""
        return self.definition.name

    @property
    def lease_ms(self) -> int:
        """The lease on a running attempt, in milliseconds."""
        return int(self.settings.lease_seconds * 1000)

    def step_name(self, index: int) -> str:
        """The name of step ``index``, or '' past the last step."""
        steps = self.definition.shape.steps
        return steps[index] if 0 <= index < len(steps) else ""

    def log(self, run_id: str, step: str = "") -> RunLog:
        """A logger whose lines carry the run's identity."""
        return run_logger(logger, run_id, self.name, step)


# --- sending and committing ------------------------------------------------------------------


def _task_of(rt: Runtime, index: int, direction: Direction) -> tuple[str, str]:
    """The task name and queue of step ``index`` in ``direction``."""
    s = rt.settings
    queue = s.step_queue if direction is Direction.FORWARD else s.compensation_queue
    return tasks.task_name(rt.name, rt.step_name(index), direction), queue


def next_message(rt: Runtime, state: SagaState) -> Message | None:
    """The message of the task at the cursor of the run in ``state``, for the store to push with
    the commit that leads there — when the broker is the store's Redis (one round trip, and no
    moment where a committed step has no message). None when the run is finished or the
    message must be sent after the commit instead (:func:`dispatch`)."""
    app = rt.definition.app
    if state.status.terminal or not rt.store.pushes_messages(messages.broker_url(app)):
        return None
    name, queue = _task_of(rt, state.current_step, state.direction)
    return messages.redis_message(app, name, state.id, version=state.definition_version, queue=queue)


def send_step(rt: Runtime, state: SagaState, index: int, direction: Direction, **options: Any) -> bool:
    """Send the task of step ``index`` in ``direction`` for the run in ``state`` (carrying the
    run's definition version). A broker that cannot be reached is logged, not raised: the run
    is saved, and the watchdog sends its step once ``SAGA_DISPATCH_TIMEOUT`` passes."""
    name, queue = _task_of(rt, index, direction)
    step = rt.step_name(index)
    try:
        tasks.send(rt.definition.app, name, state.id, version=state.definition_version, queue=queue, **options)
    except BrokerUnavailable as exc:
        rt.log(state.id, step).error(
            "could not send the next task (%s); the run is saved and a worker's watchdog will send it "
            "once the broker answers",
            exc,
        )
        return False
    return True


def dispatch(rt: Runtime, state: SagaState) -> bool:
    """Send the task at the run's cursor: a forward step, a compensation, or nothing if the run
    is finished. Returns whether a task was sent."""
    if state.status.terminal:
        return False
    return send_step(rt, state, state.current_step, state.direction)


def commit_and_follow(
    rt: Runtime, before: SagaState, transition: Transition, options: CommitOptions = PLAIN_COMMIT
) -> CommitResult:
    """Commit ``transition`` (as ``options`` say) and, if applied, follow it: cancel the run if
    an operator asked meanwhile, send the next task, or count the run as finished.

    The retention of the run's keys and its next watchdog deadline come from :mod:`saga.policy`.
    """
    after = transition.state
    message = next_message(rt, after)
    result = rt.store.commit(
        before,
        transition,
        options,
        check_at=policy.next_check_at(after.status, time.time(), rt.settings.lease_seconds),
        ttl_ms=policy.retention_ms(after.status, rt.settings.retention_seconds, archived=bool(rt.settings.archive_url)),
        message=message,
    )
    if not result.applied:
        return result
    if result.cancel and after.status is Status.RUNNING:
        cancel_now(rt, after, result.cancel)  # the commit pushed no message: the cancel decides
    elif after.status.terminal:
        metrics.run_finished(rt.name, after.status.value)
    elif message is None:
        dispatch(rt, after)
    return result


# --- runs ------------------------------------------------------------------------------------


def start_run(rt: Runtime, payload: object, key: str | None, tags: object = None) -> str:
    """Write version 1 of a new run under ``rt``'s definition and send its first step; returns
    the run id.

    With ``key`` the run id is derived from (saga, key), so a second start with the same key and
    payload writes nothing and returns the same id, also when processes race; with another
    payload it raises :class:`~saga.errors.KeyConflict`.
    """
    shape = rt.definition.shape
    if not shape.steps:
        raise SagaDefinitionError(f"saga {rt.name!r} has no steps; declare them with @saga.step")
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY):
        raise InvalidPayload(f"the start key must be a string of 1 to {MAX_KEY} characters, got {cut(key, 40)}")
    s = rt.settings
    body = validated(payload, "the saga payload", max_bytes=s.max_payload_bytes, max_depth=s.max_payload_depth)
    run_tags = validated_tags(tags)
    run_id = str(uuid.uuid5(_KEY_NAMESPACE, f"{rt.name}\0{key}")) if key is not None else str(uuid.uuid4())
    start = decide.decide_start(run_id, rt.name, body, definition_version=rt.definition.version, tags=run_tags)
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    message = next_message(rt, start.state)
    outcome = rt.store.create(shape, start, key, check_at=check_at, message=message)
    if outcome is CreateOutcome.CONFLICT:
        raise KeyConflict(rt.name, key or "", run_id)
    if outcome is CreateOutcome.CREATED and message is None:
        dispatch(rt, start.state)
    return run_id


def fail_run(rt: Runtime, state: SagaState, step_name: str, error: Exception) -> bool:
    """End a run that cannot be trusted to move: ``failed``, with a dead letter saying why."""
    transition, entry = decide.decide_fail(state, step_name, error)
    result = commit_and_follow(rt, state, transition, CommitOptions(dead_entry=entry))
    rt.log(state.id, step_name).error("run failed: %s", error)
    return result.applied


def park(store: RedisStore, state: SagaState, reason: str, log: logging.LoggerAdapter[logging.Logger]) -> bool:
    """Park a run this process cannot move (its definition is missing or differs): it waits,
    untouched, with a ``saga.parked`` event saying why, until a worker with its definition
    resumes it. True when it was parked now."""
    outcome = store.park(state, decide.parked_event(state, reason), reason)
    if outcome is ParkOutcome.PARKED:
        metrics.run_parked(state.saga)
        log.warning("parked: %s", reason)
    return outcome is ParkOutcome.PARKED


def cancel_now(rt: Runtime, state: SagaState, reason: str) -> bool:
    """Commit the cancellation of a run no attempt is running, and send its first compensation.
    False when an attempt holds a live lease (or the run moved meanwhile)."""
    transition = decide.decide_cancel(state, rt.definition.shape, reason)
    result = commit_and_follow(rt, state, transition, CommitOptions(refuse_while_leased=True))
    if result.applied:
        rt.log(state.id).warning("cancelled: %s", reason)
    return result.applied


def compensate(rt: Runtime, state: SagaState, reason: str) -> CommitResult:
    """An operator's unwind: compensate the run's committed steps not compensated yet, newest
    first, through their compensation tasks by name; refused while an attempt holds a lease."""
    transition = decide.decide_compensate(state, rt.definition.shape, reason)
    options = CommitOptions(refuse_while_leased=True, operator_unwind=True)
    result = commit_and_follow(rt, state, transition, options)
    if result.applied:
        rt.store.forget_parked([state.id])
        rt.log(state.id).warning("compensation requested by an operator: %s", reason)
    return result


def retry_compensation(rt: Runtime, state: SagaState, index: int, entry_id: str) -> bool:
    """Unwind a failed run again from compensation ``index`` (an operator retried its dead
    letter). False when the run moved meanwhile."""
    transition = decide.decide_retry_compensation(state, rt.definition.shape, index, entry_id)
    return commit_and_follow(rt, state, transition).applied


def resume(rt: Runtime, run_id: str, reason: str) -> SagaState | None:
    """Resume ``run_id`` at its cursor, unless something is moving it already.

    A run started under another definition than ``rt``'s is parked, not moved. A last checkpoint
    whose hash does not verify fails the run, with a dead letter. Otherwise ``saga.resumed`` is
    appended with a new fencing token (so a late attempt of the old lease cannot commit), the
    run leaves the parked runs, and the task at the cursor is sent. Returns the state resumed
    from, or None when the run was not resumed.
    """
    store = rt.store
    state = store.get(run_id)
    if state.status.terminal:
        store.forget_active(run_id)
        return None
    step_name = rt.step_name(state.current_step)
    log = rt.log(run_id, step_name)
    shape = rt.definition.shape
    stored = store.progress(run_id).fingerprint
    if stored != shape.fingerprint:
        why = policy.drift_reason(rt.name, state.definition_version, stored, shape.fingerprint)
        park(store, state, why, log)
        return None
    problem = policy.checkpoint_problem(state)
    if problem:
        fail_run(rt, state, step_name, CheckpointCorrupted(problem + "; not resumed"))
        return None
    event = decide.resumed_event(state, shape, reason)
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    ok, detail = store.note_events(
        state, [event], expected_version=state.version, require_idle=True, fence=True, unpark=True, check_at=check_at
    )
    if not ok:
        log.info("not resumed (%s): the run is moving", detail)
        return None
    dispatch(rt, state)
    metrics.resumed(rt.name, reason)
    log.warning("resumed from version %d (%s)", state.version, reason)
    return state
