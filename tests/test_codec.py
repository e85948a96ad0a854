"""The stored form of events (saga/core/codec.py), without Redis: every event the engine makes reads
back exactly as it was made — fields, their order, times to the microsecond — and every version
of the run folds back from it."""

from __future__ import annotations

import json
from collections.abc import Callable

from saga.core import (
    Direction,
    Event,
    EventType,
    Packer,
    SagaState,
    Shape,
    Transition,
    codec,
    decide,
    micros,
    rebuild,
    unpack,
    versions,
)

SHAPE = Shape(("a", "b", "c"), (True, True, False))


def started(state: SagaState, direction: Direction, index: int, attempt: int) -> Event:
    """A started event as begin.lua records it: at the run's version, with its attempt."""
    kind = EventType.STEP_STARTED if direction is Direction.FORWARD else EventType.COMPENSATION_STARTED
    event = decide.note_event(state, kind, step=index, name=SHAPE.steps[index], attempt=attempt)
    return {k: event[k] for k in ("type", "run_id", "at", "step", "name", "attempt", "version")}


def stored(events: list[tuple[SagaState | None, list[Event]]]) -> list[str]:
    """Pack each group of events as the store does: after the state they follow."""
    rows: list[str] = []
    t0 = 0
    for before, group in events:
        if before is None:
            t0 = micros(group[0]["at"])
            packer = Packer(t0, None, 0)
        else:
            packer = Packer(t0, before.checkpoints[-1].hash if before.checkpoints else None, before.version)
        rows += [packer.pack(e) for e in group]
    return rows


def test_a_whole_run_reads_back_event_for_event() -> None:
    retry_of = {"run_id": "r0", "entry_id": "r0.4"}
    start = decide.decide_start("r1", "s", {"n": 1, "text": "é\u2028"}, definition_version=2, retry_of=retry_of)
    log: list[tuple[SagaState | None, list[Event]]] = [(None, start.events)]
    state = start.state

    def step(make: Callable[[SagaState], Transition]) -> None:
        nonlocal state
        moved = make(state)
        log.append((state, moved.events))
        state = moved.state

    def note(event: Event) -> None:
        log.append((state, [event]))

    note(started(state, Direction.FORWARD, 0, 1))
    step(lambda s: decide.decide_step_succeeded(s, SHAPE, 0, {"a": [1, {"x": None}]}))
    note(started(state, Direction.FORWARD, 1, 1))
    note(decide.decide_retry(state, SHAPE, Direction.FORWARD, 1, 1, OSError("flaky"), 0.25))
    note(started(state, Direction.FORWARD, 1, 2))
    step(lambda s: decide.decide_step_succeeded(s, SHAPE, 1, None))  # nothing returned: hash left out
    note(decide.resumed_event(state, SHAPE, "lease expired"))
    note(decide.parked_event(state, "no worker here defines saga 's'"))
    note(started(state, Direction.FORWARD, 2, 3))
    step(lambda s: decide.decide_step_gave_up(s, SHAPE, 2, RuntimeError("no"), 3)[0])
    note(started(state, Direction.COMPENSATION, 1, 1))
    step(lambda s: decide.decide_compensation_succeeded(s, SHAPE, 1))
    note(started(state, Direction.COMPENSATION, 0, 1))
    step(lambda s: decide.decide_compensation_gave_up(s, SHAPE, 0, RuntimeError("stuck"), 2)[0])
    note(decide.note_event(state, EventType.SAGA_DEAD_LETTER_DROPPED, entry_id="r1.7", reason="handled by hand"))
    note(decide.note_event(state, EventType.SAGA_DEAD_LETTER_RESOLVED, entry_id="r1.9", reason="the run ended"))
    events = [e for _, group in log for e in group]
    assert events[0]["retry_of"] == retry_of

    back = unpack("r1", stored(log), SHAPE)

    assert [json.dumps(e) for e in back] == [json.dumps(e) for e in events]
    assert rebuild(back) == state
    assert [s.version for s in versions(back)] == list(range(1, state.version + 1))


def test_a_step_that_returns_nothing_costs_two_short_rows() -> None:
    start = decide.decide_start("r1", "s", {"blob": "x" * 200})
    moved = decide.decide_step_succeeded(start.state, SHAPE, 0, {"a": 1})
    second = decide.decide_step_succeeded(moved.state, SHAPE, 1, None)
    rows = stored([(None, start.events), (start.state, moved.events), (moved.state, second.events)])
    begun = Packer(micros(start.state.created_at), None, second.state.version)
    rows.append(begun.pack(started(second.state, Direction.FORWARD, 2, 1)))
    # a step with output stores its output and the new payload's hash; one without, neither
    assert '{"a":1}' in rows[1] and moved.state.checkpoints[-1].hash in rows[1]
    assert len(rows[2]) <= 16 and len(rows[3]) <= 16, rows[2:]


def test_a_resolved_dead_letter_is_stored_as_a_drop_that_older_readers_know() -> None:
    start = decide.decide_start("r1", "s", {}, definition_version=1)
    resolved = decide.note_event(start.state, EventType.SAGA_DEAD_LETTER_RESOLVED, entry_id="r1.3", reason="ended")
    [_, text] = stored([(None, start.events), (start.state, [resolved])])
    row = json.loads(text)
    assert row[0] == codec.CODES[EventType.SAGA_DEAD_LETTER_DROPPED]  # a code storage format 1 has
    assert row[-1] == {"resolved": True}
    [back] = unpack("r1", [text], None)[-1:]
    assert back["type"] == "saga.dead_letter_resolved" and back["entry_id"] == "r1.3" and "resolved" not in back
