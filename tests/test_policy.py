"""The policies on their own: pure functions, no Redis, no Celery, milliseconds."""

from __future__ import annotations

import random

import pytest

from saga import PermanentError
from saga.core import (
    ContinueUnwind,
    Direction,
    Forget,
    GiveUp,
    Liveness,
    LookAgain,
    Park,
    Queued,
    Refuse,
    Resume,
    Retry,
    RetryPolicy,
    SagaState,
    Shape,
    StartAgain,
    Status,
    decide,
    parse_iso,
    policy,
)

SHAPE = Shape(("a", "b", "c"), (True, True, False))
POLICY = RetryPolicy(max_retries=2, backoff=1.0, backoff_max=60.0)
NOW = parse_iso("2026-01-01T00:10:00.000000Z")


def state_at(status: Status = Status.RUNNING, updated_at: str = "2026-01-01T00:00:00.000000Z") -> SagaState:
    start = decide.decide_start("r1", "s", {"n": 1}, at=updated_at).state
    return SagaState.from_dict({**start.to_dict(), "status": status.value})


# --- retry or give up ------------------------------------------------------------------------


def test_a_transient_failure_is_retried_while_attempts_remain_and_holds_the_lease_through_the_backoff() -> None:
    rng = random.Random(3)
    for attempt in (1, 2):
        verdict = policy.retry_policy(ConnectionError("flaky"), attempt, POLICY, lease_seconds=5, rng=rng)
        assert isinstance(verdict, Retry)
        assert 0 <= verdict.delay <= min(60.0, 2 ** (attempt - 1))
        assert verdict.hold_ms == int((verdict.delay + 5) * 1000)
    assert isinstance(policy.retry_policy(ConnectionError("flaky"), 3, POLICY, lease_seconds=5), GiveUp)


def test_a_permanent_error_gives_up_at_once() -> None:
    assert isinstance(policy.retry_policy(PermanentError("no"), 1, POLICY, lease_seconds=5), GiveUp)


def test_no_retries_means_the_first_failure_gives_up() -> None:
    none = RetryPolicy(max_retries=0, backoff=1.0, backoff_max=60.0)
    assert isinstance(policy.retry_policy(ValueError("x"), 1, none, lease_seconds=5), GiveUp)


def test_the_backoff_is_capped() -> None:
    rng = random.Random(1)
    capped = RetryPolicy(max_retries=50, backoff=1.0, backoff_max=60.0)
    delays = [policy.retry_policy(OSError(), 40, capped, 5, rng) for _ in range(200)]
    assert all(isinstance(d, Retry) and d.delay <= 60.0 for d in delays)


# --- the watchdog's triage -------------------------------------------------------------------


def triage(
    state: SagaState | None,
    known: bool = True,
    lease_live: bool = False,
    began: bool = True,
    parked: bool = False,
    lease_left: float = 5.0,
    *,
    attempt: int = 1,
    queued: Queued | None = None,
    now: float = NOW,
) -> object:
    missing = "" if known else "no worker here defines saga 's'"
    facts = Liveness(missing, lease_live, began, parked, lease_left, attempt=attempt if began else 0, queued=queued)
    return policy.triage(state, facts, now=now, lease_seconds=5, dispatch_timeout=30)


def test_a_finished_or_expired_run_is_forgotten() -> None:
    assert isinstance(triage(None), Forget)
    for status in (Status.COMPLETED, Status.COMPENSATED, Status.FAILED):
        assert isinstance(triage(state_at(status)), Forget)


def test_a_run_this_process_cannot_move_is_parked_when_it_would_be_resumed() -> None:
    # its lease lapsed, or its step was sent long ago and never begun: park it, saying why
    assert triage(state_at(), known=False, began=True) == Park("no worker here defines saga 's'")
    assert triage(state_at(), known=False, began=False) == Park("no worker here defines saga 's'")
    # but not while something moves it, nor while its step may still be queued for another worker
    assert triage(state_at(), known=False, lease_live=True, lease_left=2.0) == LookAgain(NOW + 2.25)
    sent_10s_ago = state_at(updated_at="2026-01-01T00:09:50.000000Z")
    assert isinstance(triage(sent_10s_ago, known=False, began=False), LookAgain)


def test_a_parked_run_is_resumed_once_its_definition_is_here_and_waits_otherwise() -> None:
    assert triage(state_at(), known=True, parked=True) == Resume("definition available")
    assert triage(state_at(), known=False, parked=True) == LookAgain(NOW + 30)
    assert triage(state_at(), known=True, parked=True, lease_live=True) == LookAgain(NOW + 30)


def test_the_reasons_say_what_is_missing_and_what_to_do() -> None:
    assert "no worker here defines saga 'transfer'" in policy.missing_reason("transfer", 1, [])
    why = policy.missing_reason("transfer", 1, [2, 3])
    assert "version 1 of saga 'transfer' (here: 2, 3)" in why and "saga compensate" in why
    assert "needs a new version number" in policy.drift_reason("transfer", 1, "aaaa", "bbbb")


def test_a_run_with_a_live_lease_is_looked_at_just_after_that_lease_could_end() -> None:
    assert triage(state_at(), lease_live=True, lease_left=3.5) == LookAgain(NOW + 3.75)
    # never later than a whole lease (a retry's backoff hold may be longer: it is looked at again)
    assert triage(state_at(), lease_live=True, lease_left=60) == LookAgain(NOW + 5.25)


def test_an_attempt_that_began_and_holds_no_lease_is_resumed_saying_its_worker_stopped() -> None:
    verdict = triage(state_at(), began=True, attempt=2)
    assert verdict == Resume("lease expired: the worker running attempt 2 stopped renewing its lease")
    assert policy.resume_cause(verdict.reason) == "lease expired"


def test_a_step_never_begun_waits_out_the_dispatch_timeout_then_is_resumed() -> None:
    sent_10s_ago = state_at(updated_at="2026-01-01T00:09:50.000000Z")
    verdict = triage(sent_10s_ago, began=False)
    assert isinstance(verdict, LookAgain) and verdict.at == pytest.approx(NOW + 20)
    sent_long_ago = state_at(updated_at="2026-01-01T00:00:00.000000Z")
    verdict = triage(sent_long_ago, began=False)
    assert verdict == Resume("message not begun within SAGA_DISPATCH_TIMEOUT: lost or still queued")
    assert policy.resume_cause(verdict.reason) == policy.NOT_BEGUN


def test_a_retry_queued_after_its_due_time_is_watched_by_the_dispatch_timeout_not_the_lease() -> None:
    # Given a run whose attempt 1 began, failed and scheduled its retry (attempt 2), due at
    # `due`, whose message has not begun (it waits behind a backlog); the backoff's lease is gone
    due = NOW - 100
    retry = Queued(since=due, attempt=2)
    # a lease and its margin after the retry was due: nothing died, the message is queued
    assert triage(state_at(), began=True, queued=retry, now=due + 5.25) == LookAgain(due + 30)
    assert triage(state_at(), began=True, queued=retry, now=due + 29.9) == LookAgain(due + 30)
    # once the dispatch timeout has passed since it was due, it was lost (or queued too long)
    verdict = triage(state_at(), began=True, queued=retry, now=due + 30)
    assert verdict == Resume(
        "message not begun within SAGA_DISPATCH_TIMEOUT: lost or still queued (attempt 2, a retry)"
    )
    assert policy.resume_cause(verdict.reason) == "message not begun within SAGA_DISPATCH_TIMEOUT"
    # a resume's message is watched the same way, from when the resume sent it
    resumed = Queued(since=due)
    assert triage(state_at(), began=True, queued=resumed, now=due + 10) == LookAgain(due + 30)
    assert triage(state_at(), began=True, queued=resumed, now=due + 31) == Resume(
        "message not begun within SAGA_DISPATCH_TIMEOUT: lost or still queued (sent by a resume)"
    )
    # while the backoff still holds the lease, it is looked at when that lease could end
    assert triage(state_at(), began=True, lease_live=True, lease_left=2.0, queued=retry) == LookAgain(NOW + 2.25)


def test_the_message_a_run_waits_for_is_read_from_its_events() -> None:
    def event(kind: str, step: int, at: str, **fields: object) -> dict[str, object]:
        return {"type": kind, "step": step, "at": f"2026-01-01T00:00:{at}Z", **fields}

    began = event("step.started", 0, "01.000000", attempt=1)
    retrying = event("step.retrying", 0, "02.000000", direction="forward", attempt=1, delay=0.5)
    t = parse_iso("2026-01-01T00:00:02.500000Z")
    forward = Direction.FORWARD
    # a retry scheduled, not begun: due at the event's time plus its delay, carrying attempt 2
    assert policy.queued_since([began, retrying], forward, [0]) == Queued(since=t, attempt=2)
    # the retry began (and runs, or died): no queued message; its lease says which
    assert (
        policy.queued_since([began, retrying, event("step.started", 0, "03.000000", attempt=2)], forward, [0]) is None
    )
    # nothing since the last commit: the commit's message (the snapshot's time is when it was sent)
    assert policy.queued_since([began], forward, [0]) is None
    assert policy.queued_since([], forward, [0]) is None
    # a resume's message, not begun
    resumed = event("saga.resumed", 0, "09.000000", direction="forward", reason="x")
    assert policy.queued_since([began, resumed], forward, [0]) == Queued(parse_iso("2026-01-01T00:00:09.000000Z"))
    # another step's or another direction's events say nothing of this one
    other = event("step.retrying", 1, "04.000000", direction="forward", attempt=1, delay=0)
    undo = event("step.retrying", 0, "05.000000", direction="compensation", attempt=1, delay=0)
    assert policy.queued_since([began, retrying, other, undo], forward, [0]) == Queued(since=t, attempt=2)
    # a step that committed (an earlier visit) has no queued message of that visit
    failed = event("compensation.failed", 0, "06.000000")
    assert policy.queued_since([undo, failed], Direction.COMPENSATION, [0]) is None
    # a parallel group's members: the latest queued one, unless a member began since its own
    late = event("step.retrying", 2, "07.000000", direction="forward", attempt=3, delay=1)
    assert policy.queued_since([began, retrying, late], forward, [0, 2]) == Queued(
        parse_iso("2026-01-01T00:00:08.000000Z"), attempt=4
    )
    started = event("step.started", 2, "08.000000", attempt=4)
    assert policy.queued_since([began, retrying, late, started], forward, [0, 2]) is None


# --- deadlines and retention ------------------------------------------------------------------


def test_the_watchdog_looks_once_the_next_lease_could_have_lapsed_and_never_at_a_finished_run() -> None:
    assert policy.next_check_at(Status.RUNNING, NOW, lease_seconds=5) == NOW + 5.25
    assert policy.next_check_at(Status.COMPENSATING, NOW, lease_seconds=2) == NOW + 2.25
    assert policy.lease_check_at(NOW, lease_seconds=5) == NOW + 5.25
    for status in (Status.COMPLETED, Status.COMPENSATED, Status.FAILED):
        assert policy.next_check_at(status, NOW, lease_seconds=5) is None
    assert policy.dispatch_check_at(NOW, 30) == NOW + 30


def test_finished_runs_expire_after_retention_but_a_failed_or_moving_run_is_kept() -> None:
    assert policy.retention_ms(Status.COMPLETED, 3600) == policy.retention_ms(Status.COMPENSATED, 3600) == 3_600_000
    for status in (Status.FAILED, Status.RUNNING, Status.PENDING, Status.COMPENSATING):
        assert policy.retention_ms(status, 3600) == 0


# --- dead-letter actions -------------------------------------------------------------------------


def entry(kind: str, index: int = 1) -> dict[str, object]:
    return {"id": "r1.5", "kind": kind, "index": index}


def test_a_stuck_compensation_of_a_failed_run_unwinds_again_from_that_step() -> None:
    assert policy.dead_letter_action(entry("compensation", 1), state_at(Status.FAILED)) == ContinueUnwind(1)


def test_a_forward_entry_of_a_compensated_run_starts_the_run_again() -> None:
    assert policy.dead_letter_action(entry("forward"), state_at(Status.COMPENSATED)) == StartAgain()


@pytest.mark.parametrize(
    ("kind", "status", "command"),
    [
        ("forward", Status.RUNNING, "`saga tail r1`"),
        ("forward", Status.FAILED, "`saga compensate r1`"),
        ("forward", Status.COMPLETED, "`saga dlq drop r1.5 --reason TEXT`"),
        ("compensation", Status.COMPENSATED, "`saga dlq drop r1.5 --reason TEXT`"),
        ("compensation", Status.COMPENSATING, "`saga tail r1`"),
    ],
)
def test_any_other_entry_is_refused_saying_why_and_what_would_work(kind: str, status: Status, command: str) -> None:
    verdict = policy.dead_letter_action(entry(kind), state_at(status))
    assert isinstance(verdict, Refuse) and verdict.reason.startswith(f"run r1 is {status.value}: ")
    assert command in verdict.reason


# --- verification ----------------------------------------------------------------------------


def test_records_that_agree_verify_and_a_tampered_payload_does_not() -> None:
    v1 = decide.decide_start("r1", "s", {"n": 1}).state
    v2 = decide.decide_step_succeeded(v1, SHAPE, 0, {"a": 1}).state
    assert policy.verify_records(v2, v2, [v1, v2]) == []
    tampered = SagaState.from_dict({**v2.to_dict(), "payload": {"n": 1, "a": 2}})
    problems = policy.verify_records(tampered, v2, [v1, tampered])
    assert any("differs from the stored state in: payload" in p for p in problems)
    assert any("at version 2" in p and "does not match its payload" in p for p in problems)
    assert any("without gaps" in p for p in policy.verify_records(v2, v2, [v2]))
