"""A backlog: retries waiting behind a queue are not resumed as if their worker died (issue #22).

One prefork worker with one slot (a real ``celery worker`` subprocess, its own elected watchdog
scanning every 0.2 s) and a short lease; many runs whose first step fails once and heals, each
body taking 0.1 s. Every retry then waits behind the queue well past a lease after it was due,
and nothing dies: no run may be resumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import Saga, Settings, Status
from saga.registry import default_registry
from saga.testing import RedisServer, WorkerProcess, configured
from tests.chaos.app import app, backlog

ROOT = Path(__file__).resolve().parents[1]
RUNS = 30


@pytest.fixture(scope="module")
def backlog_settings(settings: Settings) -> Iterator[Settings]:
    """A private Redis, a 1 s lease, a watchdog that scans often, and a dispatch timeout longer
    than the whole backlog takes to drain (a queued message is not lost before it)."""
    with RedisServer() as server:
        yield settings.replace(
            redis_url=server.url, broker_url=server.url, lease_seconds=1, watchdog_interval=0.2, dispatch_timeout=60
        )


@pytest.fixture
def saga(backlog_settings: Settings) -> Iterator[Saga]:
    with configured(default_registry(), backlog_settings, app):
        yield backlog


@pytest.mark.timeout(300)
def test_retries_queued_behind_a_backlog_are_not_resumed(saga: Saga, backlog_settings: Settings) -> None:
    # Given one worker with one slot
    with WorkerProcess("tests.chaos.app", backlog_settings, name="backlog", concurrency=1, cwd=ROOT) as worker:
        # When many runs whose first step fails once are started at once
        run_ids = [saga.start({"n": n}) for n in range(RUNS)]
        # Then every run completes (each first step retried once) ...
        states = [saga.wait(run_id, timeout=120) for run_id in run_ids]
        assert worker.alive
    assert [s.status for s in states] == [Status.COMPLETED] * RUNS
    retried = [e for run_id in run_ids for e in saga.events(run_id) if e["type"] == "step.retrying"]
    assert len(retried) == RUNS  # the backlog did hold retries
    # ... and none was resumed: no worker died, no message was lost
    resumed = {run_id: [e["reason"] for e in saga.events(run_id) if e["type"] == "saga.resumed"] for run_id in run_ids}
    resumed = {run_id: reasons for run_id, reasons in resumed.items() if reasons}
    assert not resumed, f"{len(resumed)} of {RUNS} runs resumed without a death: {sorted(resumed.values())[:3]}"
