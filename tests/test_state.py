"""The pure state machine, without Redis or Celery."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable

import pytest

from saga.core import Direction, Event, EventType, SagaState, Shape, Status, Transition, decide, policy, rebuild, stages

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


def log_to(index: int) -> tuple[SagaState, list[Event]]:
    """:func:`run_to`, with the events that led there."""
    t = decide.decide_start("r1", "s", {"n": 1})
    state, events = t.state, list(t.events)
    for i in range(index):
        t = decide.decide_step_succeeded(state, SHAPE, i, {SHAPE.steps[i]: i})
        state, events = t.state, [*events, *t.events]
    return state, events


def test_compensation_gave_up_fails_the_run_and_keeps_the_step_that_failed_as_its_error() -> None:
    start, before = log_to(3)
    t, _ = decide.decide_step_gave_up(start, SHAPE, 3, RuntimeError("boom"), attempts=1)
    failed, entry = decide.decide_compensation_gave_up(t.state, SHAPE, 2, RuntimeError("stuck"), attempts=3)
    assert failed.state.status is Status.FAILED and entry["kind"] == "compensation"
    # the business failure stays the run's error; the compensation's is recorded apart
    assert failed.state.error is not None and (failed.state.error.name, failed.state.error.message) == ("d", "boom")
    trouble = failed.state.compensation_error
    assert trouble is not None and (trouble.name, trouble.message, trouble.attempts) == ("c", "stuck", 3)
    assert SagaState.from_dict(failed.state.to_dict()) == failed.state
    # an operator's unwind ends it compensated, still blaming d; c's open entry is resolved then
    unwound = decide.decide_compensate(failed.state, SHAPE, "operator")
    undo_c = decide.decide_compensation_succeeded(unwound.state, SHAPE, 2)
    done = decide.decide_compensation_succeeded(undo_c.state, SHAPE, 0)
    assert done.state.status is Status.COMPENSATED and done.state.error == failed.state.error
    events = [*before, *t.events, *failed.events, *unwound.events, *undo_c.events, *done.events]
    assert rebuild(events) == done.state
    [note] = decide.decide_dead_letters_resolved(done.state, events)
    assert note["type"] == "saga.dead_letter_resolved" and note["entry_id"] == entry["id"]
    assert note["version"] == done.state.version and "saga compensate" in note["reason"]
    assert rebuild([*events, note]) == done.state  # the snapshot does not change
    assert decide.decide_dead_letters_resolved(failed.state, events) == []  # not compensated: nothing


def test_a_compensation_failure_written_before_keeps_run_error_folds_as_it_was_stored() -> None:
    # runs written before the marker: compensation.failed without it set the run's error
    start, before = log_to(3)
    t, _ = decide.decide_step_gave_up(start, SHAPE, 3, RuntimeError("boom"), attempts=1)
    failed, _ = decide.decide_compensation_gave_up(t.state, SHAPE, 2, RuntimeError("stuck"), attempts=3)
    old = [{k: v for k, v in e.items() if k != "keeps_run_error"} for e in failed.events]
    state = rebuild([*before, *t.events, *old])
    assert state.error is not None and state.error.name == "c" and state.compensation_error is None
    assert "compensation_error" not in state.to_dict()


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


# --- parallel groups: members that began without a record ------------------------------------

#: q -> [f | h | c] -> p; c is undone also on its own failure, p cannot be undone
GROUPED = Shape(
    ("q", "f", "h", "c", "p"),
    (True, True, True, True, False),
    (False, False, False, True, False),
    ("",) + ("g",) * 3 + ("",),
)


def at_group(deadline: str = "") -> SagaState:
    """A grouped run whose first step committed: its cursor on the group."""
    start = decide.decide_start("r3", "s", {}, deadline_at=deadline).state
    return decide.decide_step_succeeded(start, GROUPED, 0, {"q": 1}).state


def started(step: int, attempt: int = 1) -> Event:
    return {"type": EventType.STEP_STARTED.value, "step": step, "attempt": attempt}


def test_unrecorded_members_are_those_whose_last_attempt_left_no_record() -> None:
    retried = decide.decide_retry(at_group(), GROUPED, Direction.FORWARD, 2, 1, OSError("x"), 0.1)
    undo_retried = decide.decide_retry(at_group(), GROUPED, Direction.COMPENSATION, 1, 1, OSError("x"), 0.1)
    # f's attempt left no record (a compensation's retry is no end of it); h's attempt failed
    # (recorded: it waits to retry); c gave up, but it is undone on its own failure
    events = [started(1), started(2), started(3), undo_retried, retried, {"type": "step.failed", "step": 3}]
    assert stages.unrecorded(events, GROUPED, 1) == [1, 3]
    assert stages.unrecorded([*events, {"type": "step.succeeded", "step": 1}], GROUPED, 1) == [3]
    assert stages.unrecorded([*events, started(2, 2)], GROUPED, 1) == [1, 2, 3], "h retried: no record yet"
    assert stages.unrecorded(events, GROUPED, 0) == [] and stages.unrecorded(events, GROUPED, 5) == []
    # a step alone at the cursor: the same rule
    assert stages.unrecorded([started(0)], GROUPED, 0) == [0]
    assert stages.unrecorded([started(4)], GROUPED, 4) == [], "p cannot be undone"


def test_a_deadline_at_a_group_undoes_the_members_that_began_with_the_committed_ones() -> None:
    start = decide.decide_start("r3", "s", {}, deadline_at="2030-01-01T00:00:00.000000Z")
    events, state = list(start.events), start.state
    steps: tuple[Callable[[SagaState], Transition], ...] = (
        lambda s: decide.decide_step_succeeded(s, GROUPED, 0, {"q": 1}),
        lambda s: decide.decide_step_succeeded(s, GROUPED, 1, {"f": 1}),
        # When the deadline passes with h running (c never began)
        lambda s: decide.decide_deadline_exceeded(s, GROUPED, began=[2]),
    )
    for step in steps:
        t = step(state)
        events, state = events + t.events, t.state
    assert events[-1]["began"] == [2] and state.began == (2,)
    assert state.status is Status.COMPENSATING and state.current_step == 1
    assert state.error is not None and (state.error.name, state.error.type) == ("h", "DeadlineExceeded")
    assert stages.lanes_due(state, GROUPED) == [1, 2], "f and h are undone at once, c never began"
    for index in (2, 1):
        t = decide.decide_compensation_succeeded(state, GROUPED, index)
        events, state = events + t.events, t.state
    assert stages.lanes_due(state, GROUPED) == [] and stages.left_out(state, GROUPED, [started(2)]) == []
    done = decide.decide_group_unwound(state, GROUPED)
    assert done.state.current_step == 0 and done.state.status is Status.COMPENSATING
    assert rebuild(events + done.events) == done.state
    # a group where only a member that began is left to undo: the cursor stays on it
    alone = decide.decide_cancel(at_group(), GROUPED, "stop", began=[2])
    assert (alone.state.current_step, alone.state.began) == (1, (2,))
    assert stages.lanes_due(alone.state, GROUPED) == [2]
    nothing = decide.decide_cancel(at_group(), GROUPED, "stop")
    assert nothing.state.current_step == 0 and nothing.state.began == ()


def test_a_group_unwind_adds_a_member_it_had_not_seen_begin_before_it_settles() -> None:
    # Given f committed and c gave up while h was in flight (its worker then killed)
    f = decide.decide_step_succeeded(at_group(), GROUPED, 1, {"f": 1}).state
    gave_up, _ = decide.decide_step_gave_up(f, GROUPED, 3, PermissionError("no"), 1)
    state = decide.decide_compensation_succeeded(gave_up.state, GROUPED, 3).state  # c: its own failure
    state = decide.decide_compensation_succeeded(state, GROUPED, 1).state
    assert stages.lanes_due(state, GROUPED) == []
    # When the unwind, about to settle, reads the events: h began, never ended
    events = [started(1), started(2), started(3), {"type": "step.failed", "step": 3}]
    left = stages.left_out(state, GROUPED, events)
    assert left == [2]
    added = decide.decide_undo_began(state, GROUPED, left)
    assert [(e["type"], e["began"], e["direction"]) for e in added.events] == [("saga.resumed", [2], "compensation")]
    assert stages.lanes_due(added.state, GROUPED) == [2] and added.state.version == state.version + 1
    assert stages.left_out(added.state, GROUPED, events) == []


def test_a_deadline_names_the_step_alone_and_undoes_it_when_its_attempt_began() -> None:
    state = run_to(2)
    t = decide.decide_deadline_exceeded(state, SHAPE, began=[2])
    assert t.state.current_step == 2 and t.state.status is Status.COMPENSATING
    assert t.state.error is not None and t.state.error.name == "c"
    assert "began" not in t.events[0] and t.state.began == ()


def test_snapshots_without_groups_keep_their_form_and_old_ones_load() -> None:
    state = decide.decide_deadline_exceeded(run_to(2), SHAPE, began=[2]).state
    assert "began" not in state.to_dict()
    old = {k: v for k, v in state.to_dict().items()}
    assert SagaState.from_dict(old) == state
    grouped = decide.decide_cancel(at_group(), GROUPED, "stop", began=[2]).state
    assert grouped.to_dict()["began"] == [2]
    assert SagaState.from_dict(json.loads(json.dumps(grouped.to_dict()))) == grouped
