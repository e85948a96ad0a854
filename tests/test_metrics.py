"""Prometheus metrics from a real prefork worker: the pool children's counts reach the endpoint."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from saga import Status
from saga.testing import free_port, start_worker_process, stop_process_group
from tests.conftest import rebind, wait_for


@pytest.fixture(scope="module")
def metrics_url(redis_url: str) -> Iterator[str]:
    port = free_port()
    broker = redis_url.rsplit("/", 1)[0] + "/2"  # away from the suite's in-process worker
    env = {**os.environ, "SAGA_REDIS_URL": redis_url, "SAGA_BROKER_URL": broker, "SAGA_METRICS_PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from workers.app import app

    saved = app.conf.broker_url
    rebind(app, broker)
    proc = start_worker_process("workers", env, name=f"metrics{port}")
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        stop_process_group(proc)
        rebind(app, saved)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_prefork_worker_serves_run_step_and_dead_letter_metrics(metrics_url: str) -> None:
    from workers.orders import order

    ok = order.start({"order_id": 1})
    bad = order.start({"order_id": 2, "fail_at": "create_shipment", "flaky": {"reserve_inventory": 1}})
    assert order.wait(ok, timeout=60).status is Status.COMPLETED
    assert order.wait(bad, timeout=60).status is Status.COMPENSATED

    def finished() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        m = scrape(metrics_url)
        done = m.get(("saga_runs_finished_total", (("saga", "order"), ("status", "completed"))), 0)
        return m if done >= 1 else {}

    m = wait_for(finished, timeout=30, what="the metrics endpoint to count the runs")
    assert m[("saga_runs_finished_total", (("saga", "order"), ("status", "compensated")))] >= 1
    assert m[("saga_runs_started_total", (("saga", "order"),))] >= 2
    assert m[("saga_step_retries_total", (("direction", "forward"), ("saga", "order"),
                                          ("step", "reserve_inventory")))] >= 1
    durations = [k for k in m if k[0] == "saga_step_duration_seconds_count"]
    outcomes = {dict(labels)["outcome"] for _, labels in durations}
    assert {"succeeded", "retrying", "failed"} <= outcomes
    assert m[("saga_dead_letters", ())] >= 1
