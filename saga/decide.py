"""What happens next to a run: given a state and what just happened, the events to append and
the state they produce (a :class:`~saga.state.Transition`, always ``fold(state, events)``).
Pure functions, no I/O; the choices that lead here (retry or give up, resume or wait) are in
:mod:`saga.policy`. Tested without Redis or Celery (``tests/test_state.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .state import (
    Direction,
    Event,
    EventType,
    JSONObject,
    SagaState,
    Shape,
    Status,
    Transition,
    describe_error,
    fold,
    now_iso,
    payload_hash,
)

# --- building events -------------------------------------------------------------------------


class _Builder:
    """Collects the events of one transition, stamping run id, version and time."""

    def __init__(self, state: SagaState | None, run_id: str, *, bump: bool, at: str | None) -> None:
        self.run_id = run_id
        self.version = (state.version if state else 0) + (1 if bump else 0)
        self.at = at or now_iso()
        self.events: list[Event] = []

    def add(self, kind: EventType, **fields: Any) -> None:
        self.events.append({"type": kind, "run_id": self.run_id, "version": self.version, "at": self.at, **fields})

    def transition(self, state: SagaState | None) -> Transition:
        return Transition(fold(state, self.events), self.events)


def _step(shape: Shape, index: int) -> dict[str, Any]:
    return {"step": index, "name": shape.steps[index]}


# --- transitions -----------------------------------------------------------------------------


def decide_start(
    run_id: str,
    saga: str,
    payload: JSONObject,
    at: str | None = None,
    *,
    definition_version: int = 1,
    tags: Mapping[str, str] | None = None,
) -> Transition:
    """A new run of ``saga`` under its definition ``definition_version``: version 1, pending,
    cursor on step 0, with its business ``tags`` (recorded in ``saga.started`` when any)."""
    b = _Builder(None, run_id, bump=True, at=at)
    extra = {"tags": dict(tags)} if tags else {}
    b.add(EventType.SAGA_STARTED, saga=saga, payload=payload, definition_version=definition_version, **extra)
    return b.transition(None)


def note_event(state: SagaState, kind: EventType, at: str | None = None, **fields: Any) -> Event:
    """An event that changes nothing in the snapshot (a resume, an operator's note), at the
    state's version."""
    b = _Builder(state, state.id, bump=False, at=at)
    b.add(kind, **fields)
    return b.events[0]


def resumed_event(state: SagaState, shape: Shape, reason: str, at: str | None = None) -> Event:
    """``saga.resumed``: the run goes on at its cursor from this version."""
    return note_event(
        state,
        EventType.SAGA_RESUMED,
        at,
        **_step(shape, state.current_step),
        direction=state.direction.value,
        reason=reason,
        from_version=state.version,
    )


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
    running) or complete. ``digest``: the merged payload's hash, when the caller has it already."""
    b = _Builder(state, state.id, bump=True, at=at)
    out = output or {}
    digest = digest or payload_hash({**state.payload, **out})
    last = index + 1 == len(shape.steps)
    moves: dict[str, Any] = {"current_step": index + 1}
    if state.status is Status.PENDING and not last:
        moves["status"] = Status.RUNNING.value
    b.add(EventType.STEP_SUCCEEDED, **_step(shape, index), output=out, hash=digest, **moves)
    if last:
        b.add(EventType.SAGA_COMPLETED, status=Status.COMPLETED.value)
    return b.transition(state)


def decide_retry(
    state: SagaState,
    shape: Shape,
    direction: Direction,
    index: int,
    attempt: int,
    error: BaseException,
    delay: float,
    *,
    at: str | None = None,
) -> Event:
    """An attempt failed and will be tried again after ``delay`` seconds (an event only: the
    snapshot does not change). Compensation retries are ``step.retrying`` events too, with
    ``direction: compensation``."""
    error_type, message = describe_error(error)
    b = _Builder(state, state.id, bump=False, at=at)
    b.add(
        EventType.STEP_RETRYING,
        **_step(shape, index),
        direction=direction.value,
        attempt=attempt,
        delay=round(delay, 3),
        error_type=error_type,
        error_message=message,
    )
    return b.events[0]


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


def next_compensation(state: SagaState, shape: Shape, below: int) -> int | None:
    """The highest committed step under ``below`` that defines a compensation not yet committed."""
    for index in sorted(state.committed_steps, reverse=True):
        if index < below and shape.compensable[index] and index not in state.compensated:
            return index
    return None


def _unwind(b: _Builder, state: SagaState, shape: Shape, below: int, kind: EventType, **fields: Any) -> None:
    """Add ``kind`` and start unwinding the committed steps under ``below`` (or end compensated)."""
    target = next_compensation(state, shape, below=below)
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
    b = _Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, shape.steps[index], Direction.FORWARD, index, error, attempts, b.at)
    b.add(EventType.STEP_FAILED, **_step(shape, index), error=_error_of(entry))
    lettered = {**_step(shape, index), "entry": entry}
    if shape.undo_own_failure(index):
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
    b = _Builder(state, state.id, bump=True, at=at)
    error_type, message = describe_error(error)
    step = _step(shape, index)
    failure = {"step": index, "name": step["name"], "type": error_type, "message": message, "attempts": attempts}
    b.add(EventType.STEP_FAILED, **step, error=failure)
    if shape.undo_own_failure(index):
        b.add(EventType.SAGA_REJECTED, **step, status=Status.COMPENSATING.value, current_step=index)
    else:
        _unwind(b, state, shape, index, EventType.SAGA_REJECTED, **step)
    return b.transition(state)


def decide_compensation_succeeded(state: SagaState, shape: Shape, index: int, at: str | None = None) -> Transition:
    """Compensation ``index`` committed: move to the next one down, or end compensated."""
    b = _Builder(state, state.id, bump=True, at=at)
    target = next_compensation(state, shape, below=index)
    if target is None:
        b.add(EventType.COMPENSATION_SUCCEEDED, **_step(shape, index))
        b.add(EventType.SAGA_COMPENSATED, status=Status.COMPENSATED.value)
    else:
        b.add(EventType.COMPENSATION_SUCCEEDED, **_step(shape, index), current_step=target)
    return b.transition(state)


def decide_compensation_gave_up(
    state: SagaState, shape: Shape, index: int, error: BaseException, attempts: int, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """Compensation ``index`` gave up: the unwind is stuck; the run fails and waits for an operator."""
    b = _Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, shape.steps[index], Direction.COMPENSATION, index, error, attempts, b.at)
    b.add(EventType.COMPENSATION_FAILED, **_step(shape, index), error=_error_of(entry))
    b.add(EventType.SAGA_DEAD_LETTERED, **_step(shape, index), entry=entry)
    b.add(EventType.SAGA_FAILED, status=Status.FAILED.value)
    return b.transition(state), entry


def decide_fail(
    state: SagaState, step_name: str, error: BaseException, at: str | None = None
) -> tuple[Transition, JSONObject]:
    """The run cannot be trusted to move (corrupt checkpoint, definition drift): it fails and is
    dead-lettered, so an operator sees it."""
    b = _Builder(state, state.id, bump=True, at=at)
    entry = dead_letter_entry(state, step_name, state.direction, state.current_step, error, 0, b.at)
    b.add(EventType.SAGA_DEAD_LETTERED, step=state.current_step, name=step_name, entry=entry)
    b.add(EventType.SAGA_FAILED, status=Status.FAILED.value, error=_error_of(entry))
    return b.transition(state), entry


def decide_cancel(state: SagaState, shape: Shape, reason: str, at: str | None = None) -> Transition:
    """An operator cancels a pending or running run: unwind the committed steps."""
    b = _Builder(state, state.id, bump=True, at=at)
    _unwind(b, state, shape, state.current_step, EventType.SAGA_CANCELLED, reason=reason)
    return b.transition(state)


def decide_compensate(state: SagaState, shape: Shape, reason: str, at: str | None = None) -> Transition:
    """An operator unwinds an unfinished, parked or failed run: compensate exactly its committed
    steps not compensated yet, newest first (or end compensated if there are none)."""
    b = _Builder(state, state.id, bump=True, at=at)
    fields = {"reason": reason, "from_status": state.status.value}
    _unwind(b, state, shape, len(shape.steps), EventType.SAGA_COMPENSATION_REQUESTED, **fields)
    return b.transition(state)


def compensations_due(state: SagaState, shape: Shape) -> list[str]:
    """Names of the committed steps an operator's unwind would compensate, newest first."""
    return [
        shape.steps[i]
        for i in sorted(state.committed_steps, reverse=True)
        if shape.compensable[i] and i not in state.compensated
    ]


def parked_event(state: SagaState, reason: str, at: str | None = None) -> Event:
    """``saga.parked``: the run waits, untouched, for a worker with the definition it needs."""
    return note_event(state, EventType.SAGA_PARKED, at, reason=reason, definition_version=state.definition_version)


def decide_retry_compensation(
    state: SagaState, shape: Shape, index: int, entry_id: str, at: str | None = None
) -> Transition:
    """An operator retries a stuck compensation: the failed run unwinds again from ``index``."""
    b = _Builder(state, state.id, bump=True, at=at)
    b.add(
        EventType.SAGA_RESUMED,
        **_step(shape, index),
        direction=Direction.COMPENSATION.value,
        reason="dead letter retried",
        entry_id=entry_id,
        from_version=state.version,
        status=Status.COMPENSATING.value,
        current_step=index,
    )
    return b.transition(state)
