"""Parallel groups, as a run's state sees them: which members are due at the cursor and which
an unwind undoes. Pure; the transitions themselves are in :mod:`saga.decide`.
"""

from __future__ import annotations

from .state import SagaState, Shape, Status


def lanes_due(state: SagaState, shape: Shape) -> list[int]:
    """The members of the parallel group at the run's cursor whose task is due: going forward,
    those not committed; unwinding, those to undo (committed, or failed but undone on their own
    failure) whose compensation has not committed. [] when the cursor is not on a group."""
    if state.current_step >= len(shape.steps) or not shape.group_of(state.current_step):
        return []
    stage = shape.stage(state.current_step)
    if state.status in (Status.PENDING, Status.RUNNING):
        return [i for i in stage if i not in state.committed_steps]
    if state.status is Status.COMPENSATING:
        return [i for i in to_undo(state, shape, stage) if i not in state.compensated]
    return []


def to_undo(state: SagaState, shape: Shape, stage: range) -> list[int]:
    """The members of group ``stage`` an unwind compensates: each committed member that can be
    undone, and the member that gave up if it is undone on its own failure."""
    undo = [i for i in stage if i in state.committed_steps and shape.compensable[i]]
    failed = state.error.step if state.error is not None else -1
    if failed in stage and failed not in undo and shape.undo_own_failure(failed):
        undo.append(failed)
    return sorted(undo)
