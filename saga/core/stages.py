"""Parallel groups, as a run's state sees them: which members are due at the cursor, which an
unwind undoes, and which began an attempt that may have acted without a record. Pure; the
transitions themselves are in :mod:`saga.core.decide`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .state import Direction, EventType, SagaState, Shape, Status


def lanes_due(state: SagaState, shape: Shape) -> list[int]:
    """The members of the parallel group at the run's cursor whose task is due: going forward,
    those not committed; unwinding, those to undo (committed, begun without a record, or failed
    but undone on their own failure) whose compensation has not committed. [] when the cursor
    is not on a group."""
    if state.current_step >= len(shape.steps) or not shape.group_of(state.current_step):
        return []
    stage = shape.stage(state.current_step)
    if state.status in (Status.PENDING, Status.RUNNING):
        return [i for i in stage if i not in state.committed_steps]
    if state.status is Status.COMPENSATING:
        return [i for i in to_undo(state, shape, stage) if i not in state.compensated]
    return []


def to_undo(state: SagaState, shape: Shape, stage: range) -> list[int]:
    """The members of group ``stage`` an unwind compensates: each member that can be undone and
    committed or began without a record (``state.began``: it may have acted), and the member
    that gave up if it is undone on its own failure."""
    undo = [i for i in stage if shape.compensable[i] and (i in state.committed_steps or i in state.began)]
    error = state.error
    failed = error.step if error is not None and error.type != "DeadlineExceeded" else -1
    if failed in stage and failed not in undo and shape.undo_own_failure(failed):
        undo.append(failed)
    return sorted(undo)


def unrecorded(events: Iterable[Mapping[str, Any]], shape: Shape, cursor: int) -> list[int]:
    """The steps at ``cursor`` (a step alone, or its group's members) that can be undone, did
    not commit, and may have acted without a record, as the run's events show: the last attempt
    began and nothing recorded its end (its worker was killed, it hangs, or it was fenced) — or,
    for a step undone on its own failure, any attempt began. An attempt whose failure was
    recorded (a retry, a give-up) did not act (the contract of a failing body)."""
    if not 0 <= cursor < len(shape.steps):
        return []
    stage = shape.stage(cursor)
    began: set[int] = set()
    running: set[int] = set()
    committed: set[int] = set()
    for event in events:
        step, kind = event.get("step", -1), event["type"]
        if step not in stage:
            continue
        if kind == EventType.STEP_STARTED:
            began.add(step)
            running.add(step)
        elif kind == EventType.STEP_FAILED or (
            kind == EventType.STEP_RETRYING and event.get("direction") == Direction.FORWARD.value
        ):
            running.discard(step)
        elif kind == EventType.STEP_SUCCEEDED:
            committed.add(step)
    return sorted(i for i in began - committed if shape.compensable[i] and (i in running or shape.undo_own_failure(i)))


def left_out(state: SagaState, shape: Shape, events: Iterable[Mapping[str, Any]]) -> list[int]:
    """The members of the unwinding group at the run's cursor that may have acted without a
    record (:func:`unrecorded`) but that its unwind does not undo yet: it had not seen them
    begin (a member in flight when a sibling gave up, whose worker was then killed). What a
    group's unwind must add before it is settled."""
    if state.status is not Status.COMPENSATING or not shape.group_of(state.current_step):
        return []
    undo = set(to_undo(state, shape, shape.stage(state.current_step)))
    return [i for i in unrecorded(events, shape, state.current_step) if i not in undo and i not in state.compensated]
