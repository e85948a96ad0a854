"""Building events, and the events that change nothing in a run's snapshot: a resume, a park,
an operator's note, a retry. Pure; :mod:`saga.core.decide` builds its transitions with the same
:class:`Builder` and re-exports these.
"""

from __future__ import annotations

from typing import Any

from .state import Direction, Event, EventType, SagaState, Shape, Transition, describe_error, fold, now_iso


class Builder:
    """Collects the events of one transition, stamping run id, version and time."""

    def __init__(self, state: SagaState | None, run_id: str, *, bump: bool, at: str | None) -> None:
        self.run_id = run_id
        self.version = (state.version if state else 0) + (1 if bump else 0)
        self.at = at or now_iso()
        self.events: list[Event] = []

    def add(self, kind: EventType, **fields: Any) -> None:
        """Append an event of ``kind`` with ``fields``, stamped."""
        self.events.append({"type": kind, "run_id": self.run_id, "version": self.version, "at": self.at, **fields})

    def transition(self, state: SagaState | None) -> Transition:
        """The events so far and the state they fold ``state`` to."""
        return Transition(fold(state, self.events), self.events)


def step_fields(shape: Shape, index: int) -> dict[str, Any]:
    """The ``step`` and ``name`` fields of an event about step ``index``."""
    return {"step": index, "name": shape.steps[index]}


def note_event(state: SagaState, kind: EventType, at: str | None = None, **fields: Any) -> Event:
    """An event that changes nothing in the snapshot (a resume, an operator's note), at the
    state's version."""
    b = Builder(state, state.id, bump=False, at=at)
    b.add(kind, **fields)
    return b.events[0]


def resumed_event(
    state: SagaState, shape: Shape, reason: str, at: str | None = None, *, index: int | None = None
) -> Event:
    """``saga.resumed``: the run goes on at its cursor (or, in a parallel group, at member
    ``index``) from this version."""
    return note_event(
        state,
        EventType.SAGA_RESUMED,
        at,
        **step_fields(shape, state.current_step if index is None else index),
        direction=state.direction.value,
        reason=reason,
        from_version=state.version,
    )


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
    b = Builder(state, state.id, bump=False, at=at)
    b.add(
        EventType.STEP_RETRYING,
        **step_fields(shape, index),
        direction=direction.value,
        attempt=attempt,
        delay=round(delay, 3),
        error_type=error_type,
        error_message=message,
    )
    return b.events[0]


def parked_event(state: SagaState, reason: str, at: str | None = None) -> Event:
    """``saga.parked``: the run waits, untouched, for a worker with the definition it needs."""
    return note_event(state, EventType.SAGA_PARKED, at, reason=reason, definition_version=state.definition_version)
