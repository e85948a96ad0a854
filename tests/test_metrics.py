"""Prometheus metrics from a real prefork worker: the pool children's counts reach the endpoint; the
stuck-run gauge over a real Redis; the endpoint's basic auth over real HTTP."""

from __future__ import annotations

import base64
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from saga import Settings, SettingsError, Status
from saga.engine import metrics, stuck_seconds
from saga.registry import Registry, default_registry
from saga.testing import (
    RedisServer,
    configured,
    free_port,
    start_worker_process,
    stop_process_group,
    wait_for,
    worker_env,
)
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


def test_the_stuck_gauge_reads_how_far_past_its_deadline_the_most_overdue_run_is() -> None:
    with RedisServer() as redis:
        store = Registry(Settings(redis_url=redis.url, metrics_port=0)).store
        now = time.time()
        assert stuck_seconds(store, now) == 0.0  # an empty list: nothing is overdue
        store.keyspace.client.zadd(store.keyspace.bucket_keys("later").active, {"later": now + 30})
        assert stuck_seconds(store, now) == 0.0  # a deadline still ahead is not overdue
        store.keyspace.client.zadd(store.keyspace.bucket_keys("left-behind").active, {"left-behind": now - 100})
        store.keyspace.client.zadd(store.keyspace.bucket_keys("just-due").active, {"just-due": now - 1})
        assert stuck_seconds(store, now) == pytest.approx(100.0)
        assert store.indexes.active_depth() == 3


def test_the_endpoint_answers_only_with_its_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "metrics_password"
    secret.write_text("s3cret: with a colon\n")  # the trailing newline is dropped, as Prometheus does
    secret.chmod(0o600)
    registry = CollectorRegistry()
    registry.register(metrics.StoreGauges({"saga_dead_letters": lambda: 7, "saga_stuck_run_seconds": lambda: 1.5}))
    port = free_port()
    server = metrics.start_server(port, registry, "127.0.0.1", metrics.BasicAuth.from_file("prom", str(secret)))
    url = f"http://127.0.0.1:{port}/metrics"

    def get(user: str | None, password: str = "") -> tuple[int, str]:
        request = urllib.request.Request(url)
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            assert exc.headers["WWW-Authenticate"] == 'Basic realm="saga metrics"'
            return exc.code, ""

    try:
        assert get(None)[0] == 401
        assert get("prom", "wrong")[0] == 401
        assert get("other", "s3cret: with a colon")[0] == 401
        status, text = get("prom", "s3cret: with a colon")
        assert status == 200
        assert "saga_dead_letters 7.0" in text and "saga_stuck_run_seconds 1.5" in text
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_a_missing_or_empty_password_file_without_opening_the_port(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    port = free_port()
    assert not metrics.serve(port, {}, user="prom", password_file=str(tmp_path / "missing"))
    assert not metrics.serve(port, {}, user="prom", password_file=str(empty))
    assert not metrics.serve(port, {}, user="", password_file=str(empty))
    with socket.create_server(("127.0.0.1", port)):  # still free: nothing was served
        pass


def test_only_known_gauges_can_be_read_at_scrape_time() -> None:
    with pytest.raises(ValueError, match="not one of the store gauges"):
        metrics.read_at_scrape("saga_made_up", lambda: 1.0)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_serve_refuses_a_password_file_others_can_read_without_opening_the_port(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "metrics_password"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    port = free_port()
    with caplog.at_level(logging.ERROR, logger=metrics.logger.name):
        assert not metrics.serve(port, {}, user="prom", password_file=str(secret))
    [line] = [r.getMessage() for r in caplog.records if r.name == metrics.logger.name]
    assert f"SAGA_METRICS_PASSWORD_FILE {secret} is readable by" in line and "chmod 600" in line
    assert "s3cret" not in line
    with pytest.raises(SettingsError, match="chmod 600"):
        metrics.BasicAuth.from_file("prom", str(secret))
    with socket.create_server(("127.0.0.1", port)):  # still free: nothing was served
        pass
    # once the file is its owner's alone, it serves
    secret.chmod(0o600)
    assert metrics.BasicAuth.from_file("prom", str(secret)) == metrics.BasicAuth("prom", "s3cret")
