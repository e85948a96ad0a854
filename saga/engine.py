"""The engine: every commit a run goes through, and the task that follows it.

Starting, resuming, cancelling and failing a run, and each step's result (:mod:`saga.delivery`),
go through one function, :func:`commit_and_follow`: commit the transition :mod:`saga.decide`
chose, with the retention and watchdog deadline :mod:`saga.policy` gives, then send the next
task or count the run as finished.

The engine runs any saga definition that looks like :class:`SagaDefinition`; it never imports
the definition API, which sits above it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import decide, metrics, policy, tasks
from .errors import (
    BrokerUnavailable,
    CheckpointCorrupted,
    DefinitionMismatch,
    SagaDefinitionError,
)
from .heartbeat import Heartbeat
from .log import RunLog, run_logger
from .schema import PLAIN_COMMIT, CommitOptions, CommitResult
from .settings import Settings
from .state import (
    CompensationFunction,
    Direction,
    SagaState,
    Shape,
    Status,
    StepFunction,
    Transition,
    require_json_object,
)
from .store import RedisStore

logger = logging.getLogger(__name__)

#: Namespace of run ids derived from (saga, start key).
_KEY_NAMESPACE = uuid.UUID("5a6a0000-0000-4000-8000-000000000000")


class StepDefinition(Protocol):
    """What the engine needs of a declared step."""

    @property
    def name(self) -> str:
        """The step's name, unique in its saga."""
        ...

    @property
    def index(self) -> int:
        """The step's 0-based position in its saga."""
        ...

    @property
    def fn(self) -> StepFunction:
        """The forward body."""
        ...

    @property
    def compensation(self) -> CompensationFunction | None:
        """The compensation body, if the step can be undone."""
        ...

    def task_for(self, direction: Direction) -> Any:
        """The Celery task that runs this step in ``direction``."""
        ...

    def retry_policy(self, settings: Settings) -> policy.RetryPolicy:
        """The step's retry policy, its own overrides over ``settings``' defaults."""
        ...


class SagaDefinition(Protocol):
    """What the engine needs of a declared saga."""

    @property
    def name(self) -> str:
        """The saga's name, unique in its registry."""
        ...

    @property
    def steps(self) -> Sequence[StepDefinition]:
        """The steps, in the order they run."""
        ...

    @property
    def shape(self) -> Shape:
        """Step names and which can be undone (what a run's fingerprint is taken over)."""
        ...


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
        steps = self.definition.steps
        return steps[index].name if 0 <= index < len(steps) else ""

    def log(self, run_id: str, step: str = "") -> RunLog:
        """A logger whose lines carry the run's identity."""
        return run_logger(logger, run_id, self.name, step)


# --- sending and committing ------------------------------------------------------------------


def send_step(rt: Runtime, step: StepDefinition, direction: Direction, run_id: str, **options: Any) -> bool:
    """Send one task message of ``step``; a broker that cannot be reached is logged, not raised: the run is
    saved, and the watchdog sends its step once ``SAGA_DISPATCH_TIMEOUT`` passes."""
    s = rt.settings
    queue = s.step_queue if direction is Direction.FORWARD else s.compensation_queue
    try:
        tasks.send(step.task_for(direction), run_id, queue=queue, **options)
    except BrokerUnavailable as exc:
        rt.log(run_id, step.name).error(
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
    return send_step(rt, rt.definition.steps[state.current_step], state.direction, state.id)


def commit_and_follow(
    rt: Runtime, before: SagaState, transition: Transition, options: CommitOptions = PLAIN_COMMIT
) -> CommitResult:
    """Commit ``transition`` (as ``options`` say) and, if applied, follow it: cancel the run if
    an operator asked meanwhile, send the next task, or count the run as finished.

    The retention of the run's keys and its next watchdog deadline come from :mod:`saga.policy`.
    """
    after = transition.state
    result = rt.store.commit(
        before,
        transition,
        options,
        check_at=policy.next_check_at(after.status, time.time(), rt.settings.lease_seconds),
        ttl_ms=policy.retention_ms(after.status, rt.settings.retention_seconds),
    )
    if not result.applied:
        return result
    if result.cancel and after.status is Status.RUNNING:
        cancel_now(rt, after, result.cancel)
    elif after.status.terminal:
        metrics.run_finished(rt.name, after.status.value)
    else:
        dispatch(rt, after)
    return result


# --- runs ------------------------------------------------------------------------------------


def start_run(rt: Runtime, payload: object, key: str | None) -> str:
    """Write version 1 of a new run and send its first step; returns the run id.

    With ``key`` the run id is derived from (saga, key), so a second start with the same key
    writes nothing and returns the same id, also when processes race.
    """
    if not rt.definition.steps:
        raise SagaDefinitionError(f"saga {rt.name!r} has no steps; declare them with @saga.step")
    body = require_json_object(payload, "the saga payload")
    run_id = str(uuid.uuid5(_KEY_NAMESPACE, f"{rt.name}\0{key}")) if key is not None else str(uuid.uuid4())
    start = decide.decide_start(run_id, rt.name, body)
    check_at = policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout)
    if rt.store.create(rt.name, rt.definition.shape.fingerprint, start, key, check_at=check_at):
        dispatch(rt, start.state)
    return run_id


def fail_run(rt: Runtime, state: SagaState, step_name: str, error: Exception) -> bool:
    """End a run that cannot be trusted to move: ``failed``, with a dead letter saying why."""
    transition, entry = decide.decide_fail(state, step_name, error)
    result = commit_and_follow(rt, state, transition, CommitOptions(dead_entry=entry))
    rt.log(state.id, step_name).error("run failed: %s", error)
    return result.applied


def cancel_now(rt: Runtime, state: SagaState, reason: str) -> bool:
    """Commit the cancellation of a run no attempt is running, and send its first compensation.
    False when an attempt holds a live lease (or the run moved meanwhile)."""
    transition = decide.decide_cancel(state, rt.definition.shape, reason)
    result = commit_and_follow(rt, state, transition, CommitOptions(refuse_while_leased=True))
    if result.applied:
        rt.log(state.id).warning("cancelled: %s", reason)
    return result.applied


def retry_compensation(rt: Runtime, state: SagaState, index: int, entry_id: str) -> bool:
    """Unwind a failed run again from compensation ``index`` (an operator retried its dead
    letter). False when the run moved meanwhile."""
    transition = decide.decide_retry_compensation(state, rt.definition.shape, index, entry_id)
    return commit_and_follow(rt, state, transition).applied


def resume(rt: Runtime, run_id: str, reason: str) -> SagaState | None:
    """Resume ``run_id`` at its cursor, unless something is moving it already.

    Verifies the last checkpoint's hash first (a corrupt one fails the run, with a dead letter),
    refuses a run started under another definition, appends ``saga.resumed`` with a new fencing
    token (so a late attempt of the old lease cannot commit), then sends the task at the
    cursor. Returns the state resumed from, or None when the run was not resumed.
    """
    store = rt.store
    state = store.get(run_id)
    if state.status.terminal:
        store.forget_active(run_id)
        return None
    step_name = rt.step_name(state.current_step)
    log = rt.log(run_id, step_name)
    shape = rt.definition.shape
    if store.meta(run_id).get("fingerprint") != shape.fingerprint:
        fail_run(
            rt,
            state,
            step_name,
            DefinitionMismatch(
                f"run {run_id} was started under another definition of saga {rt.name!r}; "
                "deploy the same definition everywhere"
            ),
        )
        return None
    problem = policy.checkpoint_problem(state)
    if problem:
        fail_run(rt, state, step_name, CheckpointCorrupted(problem + "; not resumed"))
        return None
    event = decide.resumed_event(state, shape, reason)
    ok, detail = store.note_events(run_id, [event], expected_version=state.version, require_idle=True, fence=True)
    if not ok:
        log.info("not resumed (%s): the run is moving", detail)
        return None
    store.schedule(run_id, policy.dispatch_check_at(time.time(), rt.settings.dispatch_timeout))
    dispatch(rt, state)
    metrics.resumed(rt.name, reason)
    log.warning("resumed from version %d (%s)", state.version, reason)
    return state
