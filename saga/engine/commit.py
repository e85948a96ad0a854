"""The engine: every commit a run goes through, and the task that follows it.

Each step's result (:mod:`saga.engine.delivery`) and every action on a whole run (:mod:`saga.engine.runs`)
go through one function, :func:`commit_and_follow`: commit the transition :mod:`saga.core.decide`
chose, with the retention and watchdog deadline :mod:`saga.core.policy` gives, then send the tasks
it made due (at a parallel group, only the members not sent before) or count the run as
finished.

The engine runs any saga definition that looks like :class:`SagaDefinition`; it never imports
the definition API, which sits above it. It needs a definition's name, version, shape and Celery
app only, and sends every task by name (``saga.<saga>.<step>[.compensate]``), so a run can also
be moved under the shape it recorded when it started (:class:`StoredDefinition`), e.g. unwound
by an operator after its definition was removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from ..core import Direction, SagaState, Shape, Status, Transition, decide, policy, stages
from ..errors import BrokerUnavailable, SagaError
from ..settings import Settings
from ..store import PLAIN_COMMIT, CommitOptions, CommitReason, CommitResult, Message, RedisStore, lane_id, memory
from ..transport import messages, tasks
from . import metrics
from .heartbeat import Heartbeat
from .log import RunLog, run_logger

logger = logging.getLogger(__name__)


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

    def in_group(self, index: int) -> bool:
        """Whether step ``index`` is a member of a parallel group."""
        return bool(self.definition.shape.group_of(index))

    def group_lanes(self, state: SagaState) -> tuple[str, ...]:
        """The forward lanes of the parallel group at the run's cursor (() when the cursor is not
        on a group): the attempts a cancel, a deadline or a group's unwind must account for."""
        if not self.in_group(state.current_step):
            return ()
        return tuple(lane_id(Direction.FORWARD.value, i) for i in self.definition.shape.stage(state.current_step))


# --- sending and committing ------------------------------------------------------------------


def _task_of(rt: Runtime, index: int, direction: Direction) -> tuple[str, str]:
    """The task name and queue of step ``index`` in ``direction``."""
    s = rt.settings
    queue = s.step_queue if direction is Direction.FORWARD else s.compensation_queue
    return tasks.task_name(rt.name, rt.step_name(index), direction), queue


def _kwargs(rt: Runtime, state: SagaState, index: int, direction: Direction, attempt: int) -> dict[str, Any]:
    """The keyword arguments of a task message of the run in ``state`` (readable in Flower)."""
    return tasks.call_kwargs(state.id, rt.name, rt.step_name(index), direction, attempt, state.definition_version)


def next_message(rt: Runtime, state: SagaState) -> Message | None:
    """The message of the task at the cursor of the run in ``state``, for the store to push with
    the commit that leads there — when the broker is the store's Redis (one round trip, and no
    moment where a committed step has no message). None when the run is finished or the
    message must be sent after the commit instead (:func:`dispatch`). The message that starts a
    run (``state`` at version 1) has the run id as its task id: every later message of the run
    has it as root id, so Flower's root links open the run's first task."""
    app = rt.definition.app
    if state.status.terminal or rt.in_group(state.current_step):
        return None  # a group's members are sent after the commit (:func:`follow`)
    if not rt.store.pushes_messages(messages.broker_url(app)):
        return None
    index, direction = state.current_step, state.direction
    name, queue = _task_of(rt, index, direction)
    kwargs = _kwargs(rt, state, index, direction, 1)
    task_id = state.id if state.version == 1 else None
    return messages.redis_message(app, name, state.id, kwargs, queue=queue, task_id=task_id)


def send_step(
    rt: Runtime,
    state: SagaState,
    index: int,
    direction: Direction,
    *,
    attempt: int = 1,
    countdown: float | None = None,
    task_id: str | None = None,
) -> bool:
    """Send the task of step ``index`` in ``direction`` for the run in ``state`` (carrying the
    run's definition version and ``attempt``, after ``countdown`` seconds; ``task_id``: the
    message's id, a new one when None). A broker that cannot be reached is logged, not raised:
    the run is saved, and the watchdog sends its step once ``SAGA_DISPATCH_TIMEOUT`` passes."""
    again = partial(send_step, rt, state, index, direction, attempt=attempt, countdown=countdown, task_id=task_id)
    if memory.in_order(rt.definition.app.conf.task_always_eager, again):  # eager: after the task that sent it
        return True
    name, queue = _task_of(rt, index, direction)
    step = rt.step_name(index)
    kwargs = _kwargs(rt, state, index, direction, attempt)
    try:
        tasks.send(rt.definition.app, name, state.id, kwargs, queue=queue, countdown=countdown, task_id=task_id)
    except BrokerUnavailable as exc:
        rt.log(state.id, step).error(
            "could not send the next task (%s); the run is saved and a worker's watchdog will send it "
            "once the broker answers",
            exc,
        )
        return False
    return True


def dispatch(rt: Runtime, state: SagaState, *, first: bool = False) -> bool:
    """Send the task at the run's cursor: a forward step, a compensation, or nothing if the run
    is finished. At a parallel group, every member due (:func:`saga.stages.lanes_due`); a
    group whose unwind has nothing left to send is settled. Returns whether a task was sent.
    ``first``: the run's first message (its start), sent with the run id as its task id (at a
    group, the first member's) — as :func:`next_message` does; a resend never is."""
    if state.status.terminal:
        return False
    if rt.in_group(state.current_step):
        due = stages.lanes_due(state, rt.definition.shape)
        ids = [state.id if first and n == 0 else None for n in range(len(due))]
        sent = [send_step(rt, state, i, state.direction, task_id=t) for i, t in zip(due, ids, strict=True)]
        if not due and state.status is Status.COMPENSATING:
            settle_group(rt, state)
        return any(sent)
    return send_step(rt, state, state.current_step, state.direction, task_id=state.id if first else None)


def follow(rt: Runtime, before: SagaState, after: SagaState) -> None:
    """Send what a commit from ``before`` to ``after`` made due. At a parallel group only the
    members that were not due before are sent (a member's commit does not resend its running
    siblings); a group whose unwind has nothing left to send is settled."""
    if not rt.in_group(after.current_step):
        dispatch(rt, after)
        return
    shape = rt.definition.shape
    due = stages.lanes_due(after, shape)
    if (before.current_step, before.direction) == (after.current_step, after.direction):
        already = set(stages.lanes_due(before, shape))
        due = [i for i in due if i not in already]
    for index in due:
        send_step(rt, after, index, after.direction)
    if after.status is Status.COMPENSATING and not stages.lanes_due(after, shape):
        settle_group(rt, after)


def settle_group(rt: Runtime, state: SagaState) -> bool:
    """Move an unwinding run past the parallel group at its cursor once every member to undo
    was compensated and no member is in flight (checked in the commit itself). Refused while a
    member runs: its end settles the group (its commit, or the watchdog once its lease lapses).

    First, the run's events are read (the unwind path only): a member that began and may have
    acted without a record, which the unwind does not undo yet (:func:`saga.stages.left_out`),
    is added to it instead — in a commit that fences every lane, so its attempt can never
    commit — and its compensation is sent; the group settles once that one commits."""
    shape = rt.definition.shape
    for _ in range(8):  # members committing concurrently move the version; decide again
        if state.status is not Status.COMPENSATING or not rt.in_group(state.current_step):
            return False
        if stages.lanes_due(state, shape):
            return False
        options = CommitOptions(refuse_while_leased=True, watch=rt.group_lanes(state))
        left = stages.left_out(state, shape, rt.store.reads.events(state.id))
        if left:
            transition = decide.decide_undo_began(state, shape, left)
            options = replace(options, fence_all=True)
        else:
            transition = decide.decide_group_unwound(state, shape)
        result = commit_and_follow(rt, state, transition, options)
        if result.applied or result.reason is not CommitReason.VERSION:
            return result.applied
        state = rt.store.reads.get(state.id)
    return False


def commit_and_follow(
    rt: Runtime, before: SagaState, transition: Transition, options: CommitOptions = PLAIN_COMMIT
) -> CommitResult:
    """Commit ``transition`` (as ``options`` say) and, if applied, follow it: cancel the run if
    an operator asked meanwhile, send the next task, or count the run as finished.

    The retention of the run's keys and its next watchdog deadline come from :mod:`saga.core.policy`.
    """
    after = transition.state
    message = next_message(rt, after)
    if any(rt.definition.shape.groups):
        options = replace(options, grouped=True)
    result = rt.store.commit(
        before,
        transition,
        options,
        check_at=policy.next_check_at(after.status, time.time(), rt.settings.lease_seconds, policy.deadline_of(after)),
        ttl_ms=policy.retention_ms(after.status, rt.settings.retention_seconds, archived=bool(rt.settings.archive_url)),
        message=message,
    )
    if not result.applied:
        return result
    if result.cancel and after.status is Status.RUNNING:
        cancel_now(rt, after, result.cancel)  # the commit pushed no message: the cancel decides
    elif after.status.terminal:
        metrics.run_finished(rt.name, after.status.value, policy.compensated_cause(after))
        resolve_dead_letters(rt, after)
    elif message is None:
        follow(rt, before, after)
    return result


def resolve_dead_letters(rt: Runtime, state: SagaState) -> None:
    """The run ended compensated: settle its compensation entries still open (each compensation
    it needed has committed since) — a ``saga.dead_letter_resolved`` event each, then the entry
    leaves the queue (:func:`saga.decide.decide_dead_letters_resolved`). The run's events are read
    only for a run that failed (a compensation gave up, or a step did); a crash between the event
    and the queue leaves the entry, which ``saga dlq retry`` then says to drop."""
    trouble = state.compensation_error is not None or (state.error is not None and state.error.type != "Rejected")
    if state.status is not Status.COMPENSATED or not trouble:
        return
    try:
        notes = decide.decide_dead_letters_resolved(state, rt.store.reads.events(state.id))
        if not notes or not rt.store.note_events(state, notes)[0]:
            return
        for note in notes:
            rt.store.indexes.remove_dead_letter(note["entry_id"])
    except SagaError as exc:
        rt.log(state.id).error("dead letters of the run not resolved (%s); `saga dlq list` shows them", exc)
        return
    rt.log(state.id).warning(
        "resolved dead letter(s) %s: %s", ", ".join(n["entry_id"] for n in notes), notes[0]["reason"]
    )


def cancel_now(rt: Runtime, state: SagaState, reason: str, *, undo_running: bool = False) -> bool:
    """Commit the cancellation of a run no attempt is running (no member, at a parallel group),
    and send its first compensations; every fence moves on, so an attempt whose lease lapsed
    (a hung step) can never commit. False when an attempt holds a live lease (or the run
    moved meanwhile). A step at the cursor whose attempt began and may have acted is
    compensated too: with ``undo_running`` (a hung attempt whose lease lapsed), or as the run's
    events show (:func:`saga.stages.unrecorded`, read here: a cancel is no hot path) — at a
    parallel group, every such member."""
    shape = rt.definition.shape
    began = stages.unrecorded(rt.store.reads.events(state.id), shape, state.current_step)
    transition = decide.decide_cancel(state, shape, reason, undo_running=undo_running, began=began)
    options = CommitOptions(refuse_while_leased=True, watch=rt.group_lanes(state), fence_all=True)
    result = commit_and_follow(rt, state, transition, options)
    if result.applied:
        rt.log(state.id).warning("cancelled: %s", reason)
    return result.applied
