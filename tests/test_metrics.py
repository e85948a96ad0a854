"""Prometheus metrics from a real prefork worker: the pool children's counts reach the endpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from saga import Settings, Status
from saga.registry import default_registry
from saga.testing import configured, free_port, start_worker_process, stop_process_group, wait_for, worker_env
from tests.helpers import Samples, scrape
from workers.app import app
from workers.orders import order


@pytest.fixture(scope="module")
def metrics_url(settings: Settings) -> Iterator[str]:
    port = free_port()
    # a broker database away from the suite's in-process worker
    mine = settings.replace(broker_url=settings.redis_url.rsplit("/", 1)[0] + "/2", metrics_port=port)
    env = worker_env(mine)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with configured(default_registry(), mine, app):
        proc = start_worker_process("workers", env, name=f"metrics{port}")
        try:
            yield f"http://127.0.0.1:{port}/metrics"
        finally:
            stop_process_group(proc)


def test_a_prefork_worker_serves_run_step_and_dead_letter_metrics(metrics_url: str) -> None:
    ok = order.start({"order_id": 1})
    bad = order.start({"order_id": 2, "fail_at": "create_shipment", "flaky": {"reserve_inventory": 1}})
    assert order.wait(ok, timeout=60).status is Status.COMPLETED
    assert order.wait(bad, timeout=60).status is Status.COMPENSATED

    def finished() -> Samples:
        m = scrape(metrics_url)
        done = m.get(("saga_runs_finished_total", (("saga", "order"), ("status", "completed"))), 0)
        return m if done >= 1 else {}

    m = wait_for(finished, timeout=30, what="the metrics endpoint to count the runs")
    assert m[("saga_runs_finished_total", (("saga", "order"), ("status", "compensated")))] >= 1
    assert m[("saga_runs_started_total", (("saga", "order"),))] >= 2
    assert (
        m[("saga_step_retries_total", (("direction", "forward"), ("saga", "order"), ("step", "reserve_inventory")))]
        >= 1
    )
    durations = [k for k in m if k[0] == "saga_step_duration_seconds_count"]
    outcomes = {dict(labels)["outcome"] for _, labels in durations}
    assert {"succeeded", "retrying", "failed"} <= outcomes
    assert m[("saga_dead_letters", ())] >= 1
    assert m[("saga_parked_runs", ())] >= 0  # read from the store at scrape time
