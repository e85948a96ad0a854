"""Prometheus metrics from the workers.

=====================================  =========  ==========================  ===================================
metric                                 type       labels                      meaning
=====================================  =========  ==========================  ===================================
``saga_runs_started_total``            counter    saga                        runs whose first step began
``saga_runs_finished_total``           counter    saga, status                runs that reached a terminal status
``saga_step_duration_seconds``         histogram  saga, step, direction,      time in a step or compensation body
                                                  outcome                     (succeeded, retrying, failed)
``saga_step_retries_total``            counter    saga, step, direction       attempts that will be retried
``saga_resumes_total``                 counter    saga, reason                runs the watchdog or an operator resumed
``saga_dead_letters``                  gauge      (none)                      entries waiting in the dead-letter queue,
                                                                              read from Redis at scrape time
=====================================  =========  ==========================  ===================================

A worker serves them on ``SAGA_METRICS_PORT`` (0 turns it off). Prefork pools count in their
children: the worker sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary folder, unless one is
set already) when it starts, before it forks, and serves the children's sum. Metrics are made
on first use, so a process that only starts runs never opens a port. No function here raises.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("saga.metrics")


@dataclass
class _Metrics:
    runs_started: Counter
    runs_finished: Counter
    step_duration: Histogram
    retries: Counter
    resumes: Counter


_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics(
            Counter("saga_runs_started_total", "Runs whose first step began.", ["saga"]),
            Counter("saga_runs_finished_total", "Runs that reached a terminal status.", ["saga", "status"]),
            Histogram("saga_step_duration_seconds", "Time in a step or compensation body.",
                      ["saga", "step", "direction", "outcome"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)),
            Counter("saga_step_retries_total", "Attempts that will be retried.", ["saga", "step", "direction"]),
            Counter("saga_resumes_total", "Runs resumed by the watchdog or an operator.", ["saga", "reason"]),
        )
    return _metrics


def _safely(record: Any) -> None:
    try:
        record()
    except Exception:
        logger.debug("metric not recorded", exc_info=True)


def run_started(saga: str) -> None:
    """Count a run whose first step began."""
    _safely(lambda: _get().runs_started.labels(saga).inc())


def run_finished(saga: str, status: str) -> None:
    """Count a run that reached ``status`` (completed, compensated or failed)."""
    _safely(lambda: _get().runs_finished.labels(saga, status).inc())


def step_finished(saga: str, step: str, direction: str, seconds: float, outcome: str) -> None:
    """Observe one body's duration; ``outcome`` is succeeded, retrying or failed."""

    def record() -> None:
        m = _get()
        m.step_duration.labels(saga, step, direction, outcome).observe(seconds)
        if outcome == "retrying":
            m.retries.labels(saga, step, direction).inc()

    _safely(record)


def resumed(saga: str, reason: str) -> None:
    """Count a resumed run."""
    _safely(lambda: _get().resumes.labels(saga, reason).inc())


class DeadLetterDepth(Collector):
    """``saga_dead_letters``, read from Redis at scrape time (left out while Redis is down)."""

    def collect(self) -> Iterator[Metric]:
        from .definition import default_store

        try:
            depth = default_store().dead_letter_depth()
        except Exception:
            return
        gauge = GaugeMetricFamily("saga_dead_letters", "Entries waiting in the dead-letter queue.")
        gauge.add_metric([], depth)
        yield gauge


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve every process's metrics (this one's and its pool children's) on ``port``."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    registry.register(DeadLetterDepth())
    start_http_server(port, addr=addr, registry=registry)


def install(app: Any) -> None:
    """Have every worker of ``app`` serve metrics on ``SAGA_METRICS_PORT``."""
    from celery import signals

    from .tasks import connect_for_app

    created: list[str] = []

    def on_init(**_: Any) -> None:
        if _port() and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # before the pool forks
            created.append(tempfile.mkdtemp(prefix="saga-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = created[-1]
            # prometheus_client chose in-memory values when it was imported; our metrics are
            # made on first use, after this, so they pick up the multiprocess values
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    def on_ready(**_: Any) -> None:
        if not _port():
            return
        try:
            serve(_port())
            logger.info("metrics on :%d/metrics", _port())
        except OSError as exc:
            logger.error("cannot serve metrics on port %d (%s); set SAGA_METRICS_PORT, or 0 to turn them off",
                         _port(), exc)

    def on_child_exit(pid: int | None = None, **_: Any) -> None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
            _safely(lambda: multiprocess.mark_process_dead(pid))  # type: ignore[no-untyped-call]

    def on_shutdown(**_: Any) -> None:
        if created:
            shutil.rmtree(created.pop(), ignore_errors=True)

    connect_for_app(signals.worker_init, app, on_init)
    connect_for_app(signals.worker_ready, app, on_ready)
    signals.worker_process_shutdown.connect(on_child_exit, weak=False)  # sent with the child's pid
    signals.worker_shutdown.connect(on_shutdown, weak=False)


def _port() -> int:
    from .settings import get_settings

    return get_settings().metrics_port
