"""The bounded chaos run inside `make test`; `make chaos` runs it for longer (CHAOS_SECONDS)."""

from __future__ import annotations

import os

import pytest

from saga.core import policy
from tests.chaos.harness import run_backlog, run_chaos


@pytest.mark.timeout(900)
def test_runs_survive_killed_workers_and_a_redis_restart(capsys: pytest.CaptureFixture[str]) -> None:
    seconds = float(os.environ.get("CHAOS_SECONDS", "40"))
    figures = run_chaos(seconds)
    with capsys.disabled():
        print("\n" + figures.report())
    assert figures.kills_worker == 3 and figures.kills_child >= 1 and figures.redis_restarts == 1
    assert figures.completed > 0 and figures.compensated > 0
    assert figures.deploys == 2 and set(figures.by_version) == {1, 2}
    assert figures.expired >= 1 and figures.grouped_completed >= 1
    # when a parallel group unwinds, a member whose attempt began but did not commit (fenced at
    # the deadline, or its worker killed) is compensated with the committed ones (issue #12)
    assert not figures.leaked, "a group's unwind left a member's effect undone: " + "; ".join(figures.leaked[:3])


@pytest.mark.timeout(600)
def test_a_backlog_with_one_slot_and_a_flaky_first_step_is_resumed_only_for_a_death(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Zero resumes without a death; with one, one resume per lost attempt or message.

    "One per death" is asserted per attempt and message the death lost: the attempt that was
    running is resumed once, its lease having expired; every other message the killed worker
    had taken (one prefetched, and each retry it held through its countdown: acks are late, so
    they sit in kombu's unacked hash for an hour) is a lost message, resumed at most once, for
    not having begun within SAGA_DISPATCH_TIMEOUT. No other run is resumed."""
    runs = int(os.environ.get("CHAOS_BACKLOG_RUNS", "20"))
    calm = run_backlog(runs, kill=False)
    with capsys.disabled():
        print("\n" + calm.report("without a death"))
    assert calm.retries == runs  # every first step failed once and was retried behind the queue
    assert not calm.resumed, f"resumed without a death: {calm.causes()}"

    killed = run_backlog(runs, kill=True)
    with capsys.disabled():
        print(killed.report("with a death"))
    assert set(killed.resumed) <= killed.held, "a run the dead worker held nothing of was resumed"
    for run_id, reasons in killed.resumed.items():
        assert len(reasons) == 1, f"{run_id} resumed {len(reasons)} times: {reasons}"
    lease_expired = {r for r, [reason] in killed.resumed.items() if policy.resume_cause(reason) == policy.LEASE_EXPIRED}
    assert lease_expired == ({killed.killed_attempt} if killed.killed_attempt else set())
    assert killed.killed_attempt in killed.resumed or not killed.killed_attempt
    not_begun = {r for r, [reason] in killed.resumed.items() if policy.resume_cause(reason) == policy.NOT_BEGUN}
    assert not_begun | lease_expired == set(killed.resumed)
