"""How events are stored: compact JSON arrays, expanded back to exactly the events they were. No I/O.

A stored event is ``[code, at, f1, f2, ...]``: the event type as a small number (:data:`CODES`),
its time, then the fields of its type in the order of :data:`SCHEMA` (a field it lacks is
``null``, trailing ones are dropped; a field outside the schema goes into a final object). What
can be derived is left out, and put back on reading:

- ``run_id``: the key the log is stored under says it;
- ``name``: the run's shape names the step at ``step``;
- ``at``: microseconds since the run started, except ``saga.started``'s own, which is the
  ISO-8601 time the run started at;
- ``version`` of a started event: the run's version when it began, the highest of the events
  before it; of a ``step.succeeded`` or ``compensation.succeeded``, which opens its commit, one
  above that; ``attempt`` of a started event when it is 1;
- ``hash`` of ``step.succeeded``: left out when it equals the last checkpoint's (a step that
  returned nothing leaves the payload, and so its hash, as it was);
- ``output`` of ``step.succeeded`` when empty, and ``current_step`` when it is the next step.

So a step that returns nothing costs two short arrays (``[1,5120,2]``, ``[3,5480,2]``) where
its JSON events took some 400 bytes, and a run's bytes grow with its payload and its steps'
outputs, not with its steps times its payload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import RunNotFound
from .state import Event, EventType, SagaState, Shape, apply, json_copy

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Each event type's code in a stored event (append only: codes never change meaning).
CODES: dict[EventType, int] = {
    EventType.SAGA_STARTED: 0,
    EventType.STEP_STARTED: 1,
    EventType.COMPENSATION_STARTED: 2,
    EventType.STEP_SUCCEEDED: 3,
    EventType.COMPENSATION_SUCCEEDED: 4,
    EventType.STEP_RETRYING: 5,
    EventType.STEP_FAILED: 6,
    EventType.COMPENSATION_FAILED: 7,
    EventType.SAGA_COMPLETED: 8,
    EventType.SAGA_COMPENSATED: 9,
    EventType.SAGA_FAILED: 10,
    EventType.SAGA_DEAD_LETTERED: 11,
    EventType.SAGA_RESUMED: 12,
    EventType.SAGA_CANCELLED: 13,
    EventType.SAGA_RETRIED: 14,
    EventType.SAGA_DEAD_LETTER_DROPPED: 15,
    EventType.SAGA_PARKED: 16,
    EventType.SAGA_COMPENSATION_REQUESTED: 17,
    EventType.SAGA_MESSAGE_REJECTED: 18,
    EventType.SAGA_REJECTED: 19,
    EventType.GROUP_COMPENSATED: 20,
    EventType.SAGA_DEADLINE_EXCEEDED: 21,
}
TYPES = {code: kind for kind, code in CODES.items()}
#: ``saga.dead_letter_resolved`` is stored as a ``saga.dead_letter_dropped`` row marked
#: ``resolved``: a reader that predates it (format 1 has no code for it) reads a drop with its
#: reason, never an unknown code, so adding it changed no storage format.
_STORED_AS = {EventType.SAGA_DEAD_LETTER_RESOLVED: EventType.SAGA_DEAD_LETTER_DROPPED}
_RESOLVED_MARK = "resolved"

_STEP = ("version", "step")
#: The positional fields of each event type, after ``[code, at]`` (``begin.lua`` writes the
#: started events itself, in this order).
SCHEMA: dict[EventType, tuple[str, ...]] = {
    EventType.SAGA_STARTED: ("version", "saga", "payload", "definition_version", "tags", "deadline_at"),
    EventType.STEP_STARTED: ("step", "attempt"),
    EventType.COMPENSATION_STARTED: ("step", "attempt"),
    EventType.STEP_SUCCEEDED: ("step", "status", "hash", "output", "current_step", "version"),
    EventType.COMPENSATION_SUCCEEDED: ("step", "current_step", "version"),
    EventType.STEP_RETRYING: (*_STEP, "direction", "attempt", "delay", "error_type", "error_message"),
    EventType.STEP_FAILED: (*_STEP, "error"),
    EventType.COMPENSATION_FAILED: (*_STEP, "error"),
    EventType.SAGA_COMPLETED: ("version", "status"),
    EventType.SAGA_COMPENSATED: ("version", "status"),
    EventType.SAGA_FAILED: ("version", "status", "error"),
    EventType.SAGA_DEAD_LETTERED: (*_STEP, "entry", "status", "current_step"),
    EventType.SAGA_RESUMED: (
        *_STEP,
        "direction",
        "reason",
        "from_version",
        "entry_id",
        "status",
        "current_step",
    ),
    EventType.SAGA_CANCELLED: ("version", "reason", "status", "current_step"),
    EventType.SAGA_RETRIED: ("version", "entry_id", "new_run_id"),
    EventType.SAGA_DEAD_LETTER_DROPPED: ("version", "entry_id", "reason"),
    EventType.SAGA_PARKED: ("version", "reason", "definition_version"),
    EventType.SAGA_COMPENSATION_REQUESTED: ("version", "reason", "from_status", "status", "current_step"),
    EventType.SAGA_MESSAGE_REJECTED: ("version", "task", "reason"),
    EventType.SAGA_REJECTED: (*_STEP, "status", "current_step"),
    EventType.GROUP_COMPENSATED: (*_STEP, "group", "status", "current_step"),
    EventType.SAGA_DEADLINE_EXCEEDED: ("version", "deadline_at", "error", "status", "current_step"),
}
_DERIVED = frozenset({"type", "run_id", "at", "name"})
#: Events recorded at the run's current version (snapshot-neutral, appended by begin.lua), whose
#: version is not stored: it is the highest version of the events before them.
_AT_CURRENT_VERSION = frozenset({EventType.STEP_STARTED, EventType.COMPENSATION_STARTED})
#: Events that open a commit: their version, one above the highest before them, is left out.
_OPEN_A_COMMIT = frozenset({EventType.STEP_SUCCEEDED, EventType.COMPENSATION_SUCCEEDED})


def micros(at: str) -> int:
    """Microseconds since the epoch of an ISO-8601 UTC time, exactly."""
    moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    return (moment - _EPOCH) // timedelta(microseconds=1)


def iso(us: int) -> str:
    """The ISO-8601 UTC time (microseconds, ``Z``) of ``us`` microseconds since the epoch."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Packer:
    """Packs the events that follow a run's version ``version`` in order, knowing its start time
    and its last checkpoint's hash."""

    def __init__(self, started_us: int, last_hash: str | None, version: int = 0) -> None:
        self.started_us = started_us
        self.last_hash = last_hash
        self.version = version

    def pack(self, event: Mapping[str, Any]) -> str:
        """One event as its stored form."""
        kind = EventType(event["type"])
        at: Any = event["at"] if kind is EventType.SAGA_STARTED else micros(event["at"]) - self.started_us
        fields = dict(event)
        if kind in _AT_CURRENT_VERSION:
            fields.pop("version", None)
            if fields.get("attempt") == 1:
                del fields["attempt"]
        elif kind in _OPEN_A_COMMIT and fields.get("version") == self.version + 1:
            del fields["version"]
        self.version = max(self.version, event.get("version", 0))
        if kind is EventType.STEP_SUCCEEDED:
            if fields.get("hash") == self.last_hash:
                del fields["hash"]
            else:
                self.last_hash = fields.get("hash")
            if fields.get("output") == {}:
                del fields["output"]
            if fields.get("current_step") == fields.get("step", -1) + 1:
                del fields["current_step"]
        if kind in _STORED_AS:
            fields[_RESOLVED_MARK] = True
            kind = _STORED_AS[kind]
        schema = SCHEMA[kind]
        row: list[Any] = [CODES[kind], at, *(fields.get(name) for name in schema)]
        while len(row) > 2 and row[-1] is None:
            row.pop()
        extra = {k: v for k, v in fields.items() if k not in schema and k not in _DERIVED}
        if extra:
            row += [None] * (2 + len(schema) - len(row)) + [extra]
        return _dumps(row)


def unpack(run_id: str, rows: Iterable[str], shape: Shape | None) -> list[Event]:
    """The events of one run from their stored form (``shape`` names the steps)."""
    events: list[Event] = []
    started_us = 0
    last_hash: str | None = None
    version = 0
    for text in rows:
        row = json.loads(text)
        kind = TYPES[row[0]]
        schema = SCHEMA[kind]
        values = row[2:]
        extra: dict[str, Any] = values.pop() if len(values) > len(schema) else {}
        fields = {name: value for name, value in zip(schema, values, strict=False) if value is not None}
        if kind is EventType.SAGA_STARTED:
            at = row[1]
            started_us = micros(at)
        else:
            at = iso(started_us + row[1])
        if kind in _AT_CURRENT_VERSION:
            at_version = version
            fields.setdefault("attempt", 1)
        else:
            at_version = fields.pop("version") if "version" in fields else version + 1
            version = max(version, at_version)
        event: Event = {"type": kind.value, "run_id": run_id, "version": at_version, "at": at}
        if "step" in fields:
            event["step"] = fields.pop("step")
            if shape is not None and "name" not in extra and 0 <= event["step"] < len(shape.steps):
                event["name"] = shape.steps[event["step"]]
        if kind is EventType.STEP_SUCCEEDED:
            fields.setdefault("output", {})
            fields.setdefault("hash", last_hash)
            fields.setdefault("current_step", event["step"] + 1)
            last_hash = fields["hash"]
        event.update(extra)
        event.update(fields)
        if kind is EventType.SAGA_DEAD_LETTER_DROPPED and event.pop(_RESOLVED_MARK, False):
            kind = EventType.SAGA_DEAD_LETTER_RESOLVED
            event["type"] = kind.value
        events.append(_ordered(event, kind))
    return events


#: The order of an event's fields as the engine makes them (so an unpacked event equals it,
#: field order included, and prints the same).
_ORDER: dict[EventType, Sequence[str]] = {
    EventType.SAGA_STARTED: ("saga", "payload", "definition_version", "tags", "deadline_at"),
    EventType.STEP_SUCCEEDED: ("step", "name", "output", "hash", "current_step", "status"),
    EventType.STEP_STARTED: ("step", "name", "attempt", "version"),
    EventType.COMPENSATION_STARTED: ("step", "name", "attempt", "version"),
}


def _ordered(event: Event, kind: EventType) -> Event:
    head: tuple[str, ...] = ("type", "run_id", "version", "at")
    order = _ORDER.get(kind)
    if kind in (EventType.STEP_STARTED, EventType.COMPENSATION_STARTED):
        head = ("type", "run_id", "at")
    if order is None:
        return event
    ordered = {k: event[k] for k in (*head, *order) if k in event}
    ordered.update({k: v for k, v in event.items() if k not in ordered})
    return ordered


def versions(events: Iterable[Event], until: int | None = None) -> list[SagaState]:
    """The run at each version its events reach (up to version ``until``), oldest first: what
    every time-travel view shows, rebuilt by folding the log."""
    states: list[SagaState] = []
    state: SagaState | None = None
    for event in events:
        if until is not None and event["version"] > until:
            break
        state = apply(state, event)
        if states and states[-1].version == state.version:
            states[-1] = state
        else:
            states.append(state)
    return states


def history(events: Iterable[Event]) -> list[SagaState]:
    """The run at every version, oldest first, each state with a payload of its own."""
    return [replace(s, payload=json_copy(s.payload)) for s in versions(events)]


def at_version(run_id: str, events: Iterable[Event], version: int) -> SagaState:
    """The run at one version, with a payload of its own; :class:`RunNotFound` when the log
    does not reach it."""
    states = versions(events, until=version)
    if version < 1 or not states or states[-1].version != version:
        raise RunNotFound(f"{run_id}@v{version}")
    return replace(states[-1], payload=json_copy(states[-1].payload))
