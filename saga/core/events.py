"""Building events, and the events that change nothing in a run's snapshot: a resume, a park,
an operator's note, a retry. Pure; :mod:`saga.core.decide` builds its transitions with the same
:class:`Builder` and re-exports these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .state import Direction, Event, EventType, JSONObject, SagaState, Shape, Transition, describe_error, fold, now_iso

#: What a dead-letter entry is once an event closed it (with its ``entry_id``): ``open`` until then.
ENTRY_CLOSED = {
    EventType.SAGA_RETRIED: "retried",  # a forward entry: a new run started with the input
    EventType.SAGA_RESUMED: "retried",  # a compensation entry: the unwind went on from it
    EventType.SAGA_DEAD_LETTER_DROPPED: "dropped",  # an operator took it off the queue
    EventType.SAGA_DEAD_LETTER_RESOLVED: "resolved",  # the run's end settled it
}


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


def dead_letter_history(events: Iterable[Mapping[str, Any]]) -> list[JSONObject]:
    """Every dead-letter entry a run's events record, oldest first: the entry as it was
    dead-lettered, with ``status`` (``open``, or what closed it: :data:`ENTRY_CLOSED`),
    ``closed_by`` (the closing event, or None) and ``operator_after``: the last operator action
    on the run after the entry — ``saga compensate``, ``saga dlq retry``, ``saga resume`` — or ''."""
    entries: dict[str, JSONObject] = {}
    for event in events:
        kind, entry = event["type"], event.get("entry")
        if kind == EventType.SAGA_DEAD_LETTERED and isinstance(entry, Mapping) and "id" in entry:
            entries[str(entry["id"])] = {**entry, "status": "open", "closed_by": None, "operator_after": ""}
            continue
        action = _operator_action(event)
        for open_entry in entries.values():
            if action and open_entry["status"] == "open":
                open_entry["operator_after"] = action
        closed = entries.get(str(event.get("entry_id")))
        if kind in ENTRY_CLOSED and closed is not None and closed["status"] == "open":
            closed.update(status=ENTRY_CLOSED[EventType(kind)], closed_by=dict(event))
    return list(entries.values())


def _operator_action(event: Mapping[str, Any]) -> str:
    """The operator's command an event records ('' for any other event)."""
    kind = event["type"]
    if kind == EventType.SAGA_COMPENSATION_REQUESTED:
        return "saga compensate"
    if kind == EventType.SAGA_RESUMED and "entry_id" in event:
        return "saga dlq retry"
    if kind == EventType.SAGA_RESUMED and event.get("reason") == "operator":
        return "saga resume"
    return ""
