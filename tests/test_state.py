"""The pure state machine, without Redis or Celery."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import pytest

from saga import decide, policy
from saga.state import Direction, Event, EventType, SagaState, Shape, Status, Transition, rebuild

SHAPE = Shape(("a", "b", "c", "d"), (True, False, True, False))


def run_to(index: int) -> SagaState:
    """A run whose steps before ``index`` committed, each adding its name to the payload."""
    state = decide.decide_start("r1", "s", {"n": 1}).state
    for i in range(index):
        state = decide.decide_step_succeeded(state, SHAPE, i, {SHAPE.steps[i]: i}).state
    return state


def test_start_is_version_one_pending_at_step_zero() -> None:
    t = decide.decide_start("r1", "s", {"x": 1})
    assert (t.state.version, t.state.status, t.state.current_step) == (1, Status.PENDING, 0)
    assert [e["type"] for e in t.events] == ["saga.started"]


def test_each_commit_adds_one_version_and_a_checkpoint_of_the_canonical_payload() -> None:
    state = run_to(3)
    assert state.version == 1 + 3
    assert [c.step for c in state.checkpoints] == [0, 1, 2]
    expected = json.dumps(dict(state.payload), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert state.checkpoints[-1].hash == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_a_run_is_pending_until_its_first_step_commits_then_running() -> None:
    assert run_to(0).status is Status.PENDING
    assert run_to(1).status is Status.RUNNING and run_to(1).version == 2


def test_last_step_completes_the_run() -> None:
    state = decide.decide_step_succeeded(run_to(3), SHAPE, 3, None).state
    assert state.status is Status.COMPLETED and state.current_step == 4


def test_gave_up_unwinds_from_the_highest_compensable_committed_step() -> None:
    # Given steps a, b, c committed (b has no compensation), When d gives up
    t, entry = decide.decide_step_gave_up(run_to(3), SHAPE, 3, RuntimeError("boom"), attempts=4)
    # Then the run compensates c first, and the entry describes the failure
    assert t.state.status is Status.COMPENSATING and t.state.current_step == 2
    assert entry["kind"] == "forward" and entry["step"] == "d" and entry["attempts"] == 4
    assert t.state.error is not None and t.state.error.type == "RuntimeError"
    # c compensated -> next is a (b is skipped: it has no compensation) -> then done
    after_c = decide.decide_compensation_succeeded(t.state, SHAPE, 2).state
    assert after_c.current_step == 0 and after_c.status is Status.COMPENSATING
    done = decide.decide_compensation_succeeded(after_c, SHAPE, 0).state
    assert done.status is Status.COMPENSATED


def test_failure_of_the_first_step_ends_compensated_with_nothing_to_undo() -> None:
    t, _ = decide.decide_step_gave_up(run_to(0), SHAPE, 0, ValueError("no"), attempts=1)
    assert t.state.status is Status.COMPENSATED


def test_compensation_gave_up_fails_the_run() -> None:
    t, _ = decide.decide_step_gave_up(run_to(3), SHAPE, 3, RuntimeError("boom"), attempts=1)
    failed, entry = decide.decide_compensation_gave_up(t.state, SHAPE, 2, RuntimeError("stuck"), attempts=3)
    assert failed.state.status is Status.FAILED and entry["kind"] == "compensation"
    assert failed.state.error is not None and failed.state.error.message == "stuck"


def test_rebuild_from_all_events_equals_the_folded_state() -> None:
    events: list[Event] = []
    t = decide.decide_start("r1", "s", {"n": 1})
    events += t.events
    state = t.state
    transitions: tuple[Callable[[SagaState], Transition], ...] = (
        lambda s: decide.decide_step_succeeded(s, SHAPE, 0, {"a": []}),
        lambda s: decide.decide_step_succeeded(s, SHAPE, 1, None),
        lambda s: decide.decide_step_gave_up(s, SHAPE, 2, KeyError("k"), 2)[0],
        lambda s: decide.decide_compensation_succeeded(s, SHAPE, 0),
    )
    states = [state]
    for next_transition in transitions:
        t = next_transition(state)
        events += t.events
        state = t.state
        states.append(state)
    # a retry of step 2 recorded at version 3, after step 1's commit: it changes nothing
    events.insert(3, decide.decide_retry(states[2], SHAPE, Direction.FORWARD, 2, 1, OSError("x"), 0.5))
    assert rebuild(events) == state
    assert state.status is Status.COMPENSATED


def test_a_note_read_at_an_older_version_and_appended_after_a_newer_commit_changes_nothing() -> None:
    start = decide.decide_start("r2", "s", {"n": 1})
    moved = decide.decide_step_succeeded(start.state, SHAPE, 0, {"a": 1})
    late = decide.note_event(start.state, EventType.SAGA_MESSAGE_REJECTED, task="t", reason="malformed")
    assert rebuild([*start.events, *moved.events, late]) == moved.state


def test_retry_delay_is_full_jitter_under_the_capped_exponential() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 1.0 * 2 ** (attempt - 1))
        delays = [policy.retry_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not a constant
    assert max(policy.retry_delay(30, 1.0, 60.0, rng) for _ in range(100)) <= 60.0


def test_shape_fingerprint_changes_with_order_and_compensations() -> None:
    base = Shape(("a", "b"), (True, False)).fingerprint
    assert Shape(("b", "a"), (True, False)).fingerprint != base
    assert Shape(("a", "b"), (True, True)).fingerprint != base
    assert Shape(("a", "b"), (True, False)).fingerprint == base


def test_a_snapshot_is_frozen_and_its_payload_is_a_plain_json_object() -> None:
    state = run_to(1)
    with pytest.raises(AttributeError):
        state.version = 9  # type: ignore[misc]
    # the payload is a dict, so json.dumps takes it as it is (and the whole state as a dict)
    assert type(state.payload) is dict
    assert json.loads(json.dumps(state.payload)) == {"n": 1, "a": 0}
    assert SagaState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_folding_events_never_changes_an_earlier_state() -> None:
    before = run_to(1)
    after = decide.decide_step_succeeded(before, SHAPE, 1, {"b": [1]}).state
    assert before.payload == {"n": 1, "a": 0} and after.payload == {"n": 1, "a": 0, "b": [1]}
    assert after.payload is not before.payload
