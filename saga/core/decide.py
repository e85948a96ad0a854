"""What happens next to a run: given a state and what just happened, the events to append and
the state they produce (a :class:`~saga.state.Transition`, always ``fold(state, events)``).
Pure functions, no I/O; the choices that lead here (retry or give up, resume or wait) are in
:mod:`saga.core.policy`. Tested without Redis or Celery (``tests/test_state.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .events import Builder, dead_letter_history, step_fields
from .events import decide_retry as decide_retry
from .events import note_event as note_event
from .events import parked_event as parked_event
from .events import resumed_event as resumed_event
from .state import Direction, EventType, JSONObject, SagaState, Shape, Status, Transition, describe_error, payload_hash

# --- transitions -----------------------------------------------------------------------------


def decide_start(
    run_id: str,
    saga: str,
    payload: JSONObject,
    at: str | None = None,
    *,
    definition_version: int = 1,
    tags: Mapping[str, str] | None = None,
    deadline_at: str = "",
    retry_of: Mapping[str, str] | None = None,
) -> Transition:
    """A new run of ``saga`` under its definition ``definition_version``: version 1, pending,
    cursor on step 0, with its business ``tags``, its deadline (an ISO-8601 time) and, for a run
    started again from a dead letter, ``retry_of`` (``run_id`` and ``entry_id`` of the run it
    retries), each recorded in ``saga.started`` when given."""
    b = Builder(None, run_id, bump=True, at=at)
    extra: dict[str, Any] = {"tags": dict(tags)} if tags else {}
    if deadline_at:
        extra["deadline_at"] = deadline_at
    if retry_of:
        extra["retry_of"] = dict(retry_of)
    b.add(EventType.SAGA_STARTED, saga=saga, payload=payload, definition_version=definition_version, **extra)
    return b.transition(None)


def decide_step_succeeded(
    state: SagaState,
    shape: Shape,
    index: int,
    output: JSONObject | None,
    at: str | None = None,
    *,
    digest: str | None = None,
) -> Transition:
    """Step ``index`` committed: merge its output, checkpoint, move on (a pending run becomes
    running) or complete. ``digest``: the merged payload's hash, when the caller has it already.

    A member of a parallel group moves the run on only when it is the group's last member to
    commit; one that commits after the group began to unwind (it was in flight) is recorded
    where the run is, and its compensation follows."""
    b = Builder(state, state.id, bump=True, at=at)
    out = output or {}
    digest = digest or payload_hash({**state.payload, **out})
    if shape.group_of(index):
        return _member_succeeded(b, state, shape, index, out, digest)
    last = index + 1 == len(shape.steps)
    moves: dict[str, Any] = {"current_step": index + 1}
    if state.status is Status.PENDING and not last:
        moves["status"] = Status.RUNNING.value
    b.add(EventType.STEP_SUCCEEDED, **step_fields(shape, index), output=out, hash=digest, **moves)
    if last:
        b.add(EventType.SAGA_COMPLETED, status=Status.COMPLETED.value)
    return b.transition(state)


def _forward_at(state: SagaState, stage: range) -> bool:
    """Whether the run still runs forward at the group ``stage``."""
    return state.status in (Status.PENDING, Status.RUNNING) and state.current_step == stage.start


def _member_succeeded(
    b: Builder, state: SagaState, shape: Shape, index: int, out: JSONObject, digest: str
) -> Transition:
    stage = shape.stage(index)
    moves: dict[str, Any] = {"current_step": state.current_step}
    completed = False
    if _forward_at(state, stage):
        committed = {*state.committed_steps, index}
        if all(i in committed for i in stage):
            moves["current_step"] = stage.stop
            completed = stage.stop == len(shape.steps)
        if state.status is Status.PENDING and not completed:
            moves["status"] = Status.RUNNING.value
    b.add(EventType.STEP_SUCCEEDED, **step_fields(shape, index), output=out, hash=digest, **moves)
    if completed:
        b.add(EventType.SAGA_COMPLETED, status=Status.COMPLETED.value)
    return b.transition(state)


def decide_group_unwound(state: SagaState, shape: Shape, at: str | None = None) -> Transition:
    """Every member to undo of the group at the cursor has been compensated, and no member is
    in flight: ``group.compensated``, then on to the steps before the group (or end
    compensated)."""
    b = Builder(state, state.id, bump=True, at=at)
    stage = shape.stage(state.current_step)
    fields = {**step_fields(shape, stage.start), "group": shape.group_of(stage.start)}
    _unwind(b, state, shape, stage.start, EventType.GROUP_COMPENSATED, **fields)
    return b.transition(state)


def decide_deadline_exceeded(
    state: SagaState,
    shape: Shape,
    at: str | None = None,
    *,
    undo_running: bool = False,
    began: Sequence[int] = (),
) -> Transition:
    """The run's deadline passed while it ran forward: ``saga.deadline_exceeded`` with a
    ``DeadlineExceeded`` error naming the step that was running (at a parallel group, the first
    member begun and not committed), then unwind every committed step (or end compensated) —
    and the steps at the cursor whose attempt began and may have acted (``undo_running``, or
    listed in ``began``: :func:`saga.stages.unrecorded`), compensated with them."""
    b = Builder(state, state.id, bump=True, at=at)
    index = min(state.current_step, len(shape.steps) - 1)
    running = [index]
    if shape.group_of(index):
        stage = shape.stage(index)
        waiting = [i for i in stage if i not in state.committed_steps]
        running = [i for i in began if i in waiting] or waiting or [stage.start]
    names = ", ".join(repr(shape.steps[i]) for i in running)
    error = {
        "step": running[0],
        "name": shape.steps[running[0]],
        "type": "DeadlineExceeded",
        "message": f"the run's deadline {state.deadline_at} passed at step{'s' if len(running) > 1 else ''} {names}",
        "attempts": 0,
    }
    kind = EventType.SAGA_DEADLINE_EXCEEDED
    _unwind_cursor(b, state, shape, undo_running, began, kind, deadline_at=state.deadline_at, error=error)
    return b.transition(state)


def dead_letter_entry(
    state: SagaState, name: str, direction: Direction, index: int, error: BaseException, attempts: int, at: str
) -> JSONObject:
    """The dead-letter entry recorded when a step or compensation gives up.

    Its id is ``<run id>.<version that records it>``: unique, and stable if the commit is retried.
    """
    error_type, message = describe_error(error)
    return {
        "id": f"{state.id}.{state.version + 1}",
        "run_id": state.id,
        "saga": state.saga,
        "step": name,
        "index": index,
        "kind": direction.value,
        "error_type": error_type,
        "error_message": message,
        "attempts": attempts,
        "at": at,
    }


def _error_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The ``error`` field of a state, from the dead-letter entry of the same failure."""
    return {
        "step": entry["index"],
        "name": entry["step"],
        "type": entry["error_type"],
        "message": entry["error_message"],
        "attempts": entry["attempts"],
    }


def next_compensation(state: SagaState, shape: Shape, below: int, began: Sequence[int] = ()) -> int | None:
    """Where the unwind goes next: the highest step under ``below`` that committed (or, for a
    member of a parallel group, began without a record: ``state.began`` and ``began``) and
    defines a compensation not yet committed — or, for a member of a parallel group, the
    group's first member (the cursor of a group's unwind, whose members are compensated
    together)."""
    for index in sorted({*state.committed_steps, *state.began, *began}, reverse=True):
        if index < below and shape.compensable[index] and index not in state.compensated:
            return shape.stage(index).start
    return None


def _unwind(
    b: Builder, state: SagaState, shape: Shape, below: int, kind: EventType, began: Sequence[int] = (), **fields: Any
) -> None:
    """Add ``kind`` and start unwinding the committed steps under ``below`` (or end compensated).
    ``began``: members of parallel groups that began without a record (they may have acted),
    recorded in ``kind`` as its ``began`` field and undone like committed members."""
    done = {*state.committed_steps, *state.compensated}
    undo = sorted(i for i in began if i < below and shape.group_of(i) and shape.compensable[i] and i not in done)
    if undo:
        fields["began"] = undo
    target = next_compensation(state, shape, below=below, began=undo)
    if target is None:
        b.add(kind, **fields)
        b.add(EventType.SAGA_COMPENSATED, status=Status.COMPENSATED.value)
    else:
        b.add(kind, **fields, status=Status.COMPENSATING.value, current_step=target)


def decide_step_gave_up(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """Step ``index`` gave up: dead-letter it, then unwind — from the step itself when it is
    undone also on its own failure (it may have acted), else from the step below — or end
    compensated if there is nothing to undo."""
    b = Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, shape.steps[index], Direction.FORWARD, index, error, attempts, b.at)
    b.add(EventType.STEP_FAILED, **step_fields(shape, index), error=_error_of(entry))
    lettered = {**step_fields(shape, index), "entry": entry}
    if shape.group_of(index):
        _member_failed(b, state, shape, index, EventType.SAGA_DEAD_LETTERED, **lettered)
    elif shape.undo_own_failure(index):
        b.add(EventType.SAGA_DEAD_LETTERED, **lettered, status=Status.COMPENSATING.value, current_step=index)
    else:
        _unwind(b, state, shape, index, EventType.SAGA_DEAD_LETTERED, **lettered)
    return b.transition(state), entry


def decide_step_rejected(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int, at: str | None = None
) -> Transition:
    """Step ``index`` rejected the request (:class:`~saga.errors.Rejected`): record why, then
    unwind as for a step that gave up — but with no dead letter, since nothing needs an
    operator."""
    b = Builder(state, state.id, bump=True, at=at)
    error_type, message = describe_error(error)
    step = step_fields(shape, index)
    failure = {"step": index, "name": step["name"], "type": error_type, "message": message, "attempts": attempts}
    b.add(EventType.STEP_FAILED, **step, error=failure)
    if shape.group_of(index):
        _member_failed(b, state, shape, index, EventType.SAGA_REJECTED, **step)
    elif shape.undo_own_failure(index):
        b.add(EventType.SAGA_REJECTED, **step, status=Status.COMPENSATING.value, current_step=index)
    else:
        _unwind(b, state, shape, index, EventType.SAGA_REJECTED, **step)
    return b.transition(state)


def _member_failed(b: Builder, state: SagaState, shape: Shape, index: int, kind: EventType, **fields: Any) -> None:
    """A member of a parallel group gave up (or rejected): the group unwinds where it is — no
    member that has not begun starts, the members in flight run to their end — or, if it
    unwinds already, the failure is recorded where the run is."""
    stage = shape.stage(index)
    if _forward_at(state, stage):
        b.add(kind, **fields, status=Status.COMPENSATING.value, current_step=stage.start)
    else:
        b.add(kind, **fields)


def decide_compensation_succeeded(state: SagaState, shape: Shape, index: int, at: str | None = None) -> Transition:
    """Compensation ``index`` committed: move to the next one down, or end compensated. A
    member of a parallel group leaves the cursor on its group (:func:`decide_group_unwound`
    moves on once every member is undone)."""
    b = Builder(state, state.id, bump=True, at=at)
    if shape.group_of(index):
        b.add(EventType.COMPENSATION_SUCCEEDED, **step_fields(shape, index))
        return b.transition(state)
    target = next_compensation(state, shape, below=index)
    if target is None:
        b.add(EventType.COMPENSATION_SUCCEEDED, **step_fields(shape, index))
        b.add(EventType.SAGA_COMPENSATED, status=Status.COMPENSATED.value)
    else:
        b.add(EventType.COMPENSATION_SUCCEEDED, **step_fields(shape, index), current_step=target)
    return b.transition(state)


def decide_compensation_gave_up(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """Compensation ``index`` gave up: the unwind is stuck; the run fails and waits for an operator.
    The failure is the run's ``compensation_error`` (``keeps_run_error``): its ``error`` stays the
    failure that made it unwind."""
    b = Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, shape.steps[index], Direction.COMPENSATION, index, error, attempts, b.at)
    b.add(EventType.COMPENSATION_FAILED, **step_fields(shape, index), keeps_run_error=True, error=_error_of(entry))
    b.add(EventType.SAGA_DEAD_LETTERED, **step_fields(shape, index), entry=entry)
    b.add(EventType.SAGA_FAILED, status=Status.FAILED.value)
    return b.transition(state), entry


def decide_fail(
    state: SagaState, step_name: str, error: BaseException, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """The run cannot be trusted to move (corrupt checkpoint, definition drift): it fails and is
    dead-lettered, so an operator sees it."""
    b = Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, step_name, state.direction, state.current_step, error, 0, b.at)
    b.add(EventType.SAGA_DEAD_LETTERED, step=state.current_step, name=step_name, entry=entry)
    b.add(EventType.SAGA_FAILED, status=Status.FAILED.value, error=_error_of(entry))
    return b.transition(state), entry


def decide_cancel(
    state: SagaState,
    shape: Shape,
    reason: str,
    at: str | None = None,
    *,
    undo_running: bool = False,
    began: Sequence[int] = (),
) -> Transition:
    """An operator cancels a pending or running run: unwind the committed steps — and the steps
    at the cursor whose attempt began and was fenced (it may have acted: ``undo_running``, or
    listed in ``began``), compensated with them."""
    b = Builder(state, state.id, bump=True, at=at)
    _unwind_cursor(b, state, shape, undo_running, began, EventType.SAGA_CANCELLED, reason=reason)
    return b.transition(state)


def _unwind_cursor(
    b: Builder, state: SagaState, shape: Shape, undo_running: bool, began: Sequence[int], kind: EventType, **fields: Any
) -> None:
    """Add ``kind`` and unwind the committed steps up to the cursor's stage: from the cursor's
    own step when it runs alone, can be undone and may have acted (``undo_running``, or in
    ``began``); at a parallel group, with its members in ``began`` undone like committed ones."""
    cursor = state.current_step
    if cursor >= len(shape.steps):
        _unwind(b, state, shape, cursor, kind, **fields)
    elif shape.group_of(cursor):
        stage = shape.stage(cursor)
        _unwind(b, state, shape, stage.stop, kind, [i for i in began if i in stage], **fields)
    elif (undo_running or cursor in began) and shape.compensable[cursor]:
        b.add(kind, **fields, status=Status.COMPENSATING.value, current_step=cursor)
    else:
        _unwind(b, state, shape, cursor + 1, kind, **fields)


def decide_compensate(
    state: SagaState, shape: Shape, reason: str, at: str | None = None, *, began: Sequence[int] = ()
) -> Transition:
    """An operator unwinds an unfinished, parked or failed run: compensate exactly its committed
    steps not compensated yet, newest first (or end compensated if there are none) — and the
    members of the parallel group at its cursor listed in ``began`` (begun without a record:
    they may have acted)."""
    b = Builder(state, state.id, bump=True, at=at)
    fields = {"reason": reason, "from_status": state.status.value}
    _unwind(b, state, shape, len(shape.steps), EventType.SAGA_COMPENSATION_REQUESTED, began, **fields)
    return b.transition(state)


def compensations_due(state: SagaState, shape: Shape, began: Sequence[int] = ()) -> list[str]:
    """Names of the steps an operator's unwind would compensate, newest first: the committed
    ones, and the group members that began without a record (``state.began`` and ``began``)."""
    return [
        shape.steps[i]
        for i in sorted({*state.committed_steps, *state.began, *began}, reverse=True)
        if shape.compensable[i] and i not in state.compensated
    ]


def decide_undo_began(state: SagaState, shape: Shape, members: Sequence[int], at: str | None = None) -> Transition:
    """The unwind of the parallel group at the cursor found ``members`` begun without a record
    that it does not undo yet (:func:`saga.stages.left_out`): they may have acted, so they are
    compensated too. A ``saga.resumed`` event (direction ``compensation``) lists them in
    ``began``."""
    b = Builder(state, state.id, bump=True, at=at)
    b.add(
        EventType.SAGA_RESUMED,
        **step_fields(shape, members[0]),
        direction=Direction.COMPENSATION.value,
        reason="began, never committed: may have acted",
        from_version=state.version,
        began=sorted(members),
    )
    return b.transition(state)


def decide_retry_compensation(
    state: SagaState, shape: Shape, index: int, entry_id: str, at: str | None = None
) -> Transition:
    """An operator retries a stuck compensation: the failed run unwinds again from ``index``."""
    b = Builder(state, state.id, bump=True, at=at)
    b.add(
        EventType.SAGA_RESUMED,
        **step_fields(shape, index),
        direction=Direction.COMPENSATION.value,
        reason="dead letter retried",
        entry_id=entry_id,
        from_version=state.version,
        status=Status.COMPENSATING.value,
        current_step=shape.stage(index).start,
    )
    return b.transition(state)


def decide_dead_letters_resolved(
    state: SagaState, events: Sequence[Mapping[str, Any]], at: str | None = None
) -> list[JSONObject]:
    """The run ended compensated: every compensation entry of it still open is settled (each
    compensation the run needed has committed since), and recorded so — one
    ``saga.dead_letter_resolved`` event per entry (at the run's version: the snapshot does not
    change), saying what ended the run. [] for a run not compensated, or with none open. A forward
    entry stays open: its run can still be started again (``saga dlq retry``) or dropped."""
    if state.status is not Status.COMPENSATED:
        return []
    notes = []
    for entry in dead_letter_history(events):
        if entry["status"] != "open" or entry.get("kind") != Direction.COMPENSATION.value:
            continue
        by = entry["operator_after"]
        reason = f"the run ended compensated after `{by}`" if by else "the run ended compensated"
        notes.append(note_event(state, EventType.SAGA_DEAD_LETTER_RESOLVED, at, entry_id=entry["id"], reason=reason))
    return notes
