"""Prometheus metrics from the workers: the only module that imports prometheus_client.

=====================================  =========  ==========================  ===================================
metric                                 type       labels                      meaning
=====================================  =========  ==========================  ===================================
``saga_runs_started_total``            counter    saga                        runs whose first step began
``saga_runs_finished_total``           counter    saga, status                runs that reached a terminal status
``saga_step_duration_seconds``         histogram  saga, step, direction,      time in a step or compensation body
                                                  outcome                     (succeeded, retrying, failed)
``saga_step_retries_total``            counter    saga, step, direction       attempts that will be retried
``saga_resumes_total``                 counter    saga, reason                runs the watchdog or an operator resumed
``saga_runs_parked_total``             counter    saga                        runs parked: no worker had the definition
``saga_poison_messages_total``         counter    task                        malformed messages rejected unprocessed
``saga_runs_compensated_total``       counter    saga, cause                 compensated runs by cause: rejected,
                                                                              deadline, cancelled, failure
``saga_runs_expired_total``            counter    saga                        runs whose deadline passed
``saga_dead_letters``                  gauge      (none)                      entries waiting in the dead-letter queue,
                                                                              read from Redis at scrape time
``saga_parked_runs``                   gauge      (none)                      runs parked now, read at scrape time
``saga_active_runs``                   gauge      (none)                      unfinished runs on the watchdog's list,
                                                                              read at scrape time
``saga_stuck_run_seconds``             gauge      (none)                      how long the most overdue unfinished run
                                                                              has waited past its progress deadline
                                                                              with nothing moving it (0: none)
``saga_archive_feed_depth``            gauge      bucket                      feed entries not yet archived (with an
                                                                              archive), read at scrape time
``saga_archive_lag_seconds``           gauge      bucket                      age of the oldest of them
=====================================  =========  ==========================  ===================================

A worker serves them on ``SAGA_METRICS_PORT`` (0 turns it off); the registry wires the calls
below to the worker's signals. Prefork pools count in their children: the worker sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary folder, unless one is set already) when it
starts, before it forks, and serves the children's sum. Metrics are made on first use, so a
process that only starts runs never opens a port. No recorder here raises.

With a user and a password file, the endpoint answers only requests carrying them (HTTP basic
auth, compared in constant time), so the same secret file serves the worker and Prometheus's
``basic_auth.password_file``; ``config/prometheus/`` and ``config/grafana/`` ship the scrape
config, the alert rules and the dashboard over these names (``tests/test_dashboards.py`` checks
every name they use against a real worker's endpoint).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from ..errors import SettingsError

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class _Metrics:
    runs_started: Counter
    runs_finished: Counter
    step_duration: Histogram
    retries: Counter
    resumes: Counter
    parked: Counter
    poison: Counter
    compensated: Counter
    expired: Counter


# Made on first use: prometheus_client picks its value class (in-memory or multiprocess) when a
# metric is made, and a worker decides which one only when it starts.
_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        _children.clear()
        _metrics = _Metrics(
            Counter("saga_runs_started_total", "Runs whose first step began.", ["saga"]),
            Counter("saga_runs_finished_total", "Runs that reached a terminal status.", ["saga", "status"]),
            Histogram(
                "saga_step_duration_seconds",
                "Time in a step or compensation body.",
                ["saga", "step", "direction", "outcome"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            ),
            Counter("saga_step_retries_total", "Attempts that will be retried.", ["saga", "step", "direction"]),
            Counter("saga_resumes_total", "Runs resumed by the watchdog or an operator.", ["saga", "reason"]),
            Counter("saga_runs_parked_total", "Runs parked: no worker had their definition.", ["saga"]),
            Counter("saga_poison_messages_total", "Malformed messages rejected unprocessed.", ["task"]),
            Counter(
                "saga_runs_compensated_total",
                "Runs that ended compensated, by cause: rejected (an expected outcome), deadline, "
                "cancelled (an operator), failure (a step gave up: it has a dead letter).",
                ["saga", "cause"],
            ),
            Counter("saga_runs_expired_total", "Runs whose deadline passed before they finished.", ["saga"]),
        )
    return _metrics


#: Labelled children already looked up: ``labels()`` validates and locks on every call, and a
#: step's histogram is observed on every delivery.
_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _safely(record: Callable[[], Any]) -> None:
    try:
        record()
    except Exception:
        logger.debug("metric not recorded", exc_info=True)


def run_started(saga: str) -> None:
    """Count a run whose first step began."""
    _safely(lambda: _get().runs_started.labels(saga).inc())


def run_finished(saga: str, status: str, cause: str = "") -> None:
    """Count a run that reached ``status`` (completed, compensated or failed); a compensated
    run is counted by ``cause`` too (rejected, deadline, cancelled, failure)."""

    def record() -> None:
        m = _get()
        m.runs_finished.labels(saga, status).inc()
        if cause:
            m.compensated.labels(saga, cause).inc()

    _safely(record)


def run_expired(saga: str) -> None:
    """Count a run whose deadline passed."""
    _safely(lambda: _get().expired.labels(saga).inc())


def step_finished(saga: str, step: str, direction: str, seconds: float, outcome: str) -> None:
    """Observe one body's duration; ``outcome`` is succeeded, retrying or failed."""

    def record() -> None:
        m = _get()
        _child(m.step_duration, saga, step, direction, outcome).observe(seconds)
        if outcome == "retrying":
            _child(m.retries, saga, step, direction).inc()

    _safely(record)


def resumed(saga: str, reason: str) -> None:
    """Count a resumed run."""
    _safely(lambda: _get().resumes.labels(saga, reason).inc())


def run_parked(saga: str) -> None:
    """Count a parked run."""
    _safely(lambda: _get().parked.labels(saga).inc())


def poison_message(task: str) -> None:
    """Count a malformed message rejected for ``task``."""
    _safely(lambda: _get().poison.labels(task).inc())


#: The gauges read from the store at scrape time: name -> help.
STORE_GAUGES = {
    "saga_dead_letters": "Entries waiting in the dead-letter queue.",
    "saga_parked_runs": "Runs parked, waiting for a worker with their definition.",
    "saga_active_runs": "Unfinished runs on the watchdog's list.",
    "saga_stuck_run_seconds": "How long the most overdue unfinished run has waited past its progress "
    "deadline with nothing moving it (0: none is overdue).",
}

#: Store gauges a part of this process registered for itself (:func:`read_at_scrape`), read by
#: every endpoint it serves, whenever it was started.
_scrape_reads: dict[str, Callable[[], float]] = {}


def read_at_scrape(name: str, read: Callable[[], float] | None) -> None:
    """Have this process's endpoint read the gauge ``name`` (one of :data:`STORE_GAUGES`) through
    ``read`` at every scrape, from now on; ``None`` stops it."""
    if name not in STORE_GAUGES:
        raise ValueError(f"{name} is not one of the store gauges: {', '.join(STORE_GAUGES)}")
    if read is None:
        _scrape_reads.pop(name, None)
    else:
        _scrape_reads[name] = read


class StoreGauges(Collector):
    """The :data:`STORE_GAUGES`, each read at scrape time through its function in ``reads`` or
    registered by :func:`read_at_scrape` (one left out when its read raises, e.g. while Redis is
    down)."""

    def __init__(self, reads: Mapping[str, Callable[[], float]]) -> None:
        self._reads = dict(reads)

    def collect(self) -> Iterator[Metric]:
        """The gauges, read now."""
        for name, read in {**_scrape_reads, **self._reads}.items():
            try:
                value = read()
            except Exception:
                continue
            gauge = GaugeMetricFamily(name, STORE_GAUGES[name])
            gauge.add_metric([], value)
            yield gauge


def prepare_multiprocess() -> str | None:
    """Before a worker forks its pool: count in the children too (multiprocess mode). Returns
    the folder made for it, or None when ``PROMETHEUS_MULTIPROC_DIR`` was set already."""
    if os.environ.get(MULTIPROC_ENV):
        return None
    folder = tempfile.mkdtemp(prefix="saga-metrics-")
    # the variable is how prometheus_client and the forked children find the folder
    os.environ[MULTIPROC_ENV] = folder
    # prometheus_client chose in-memory values when it was imported; our metrics are made on
    # first use, after this, so they pick up the multiprocess values
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return folder


class ArchiveGauges(Collector):
    """The archive feed's depth and lag per bucket, read at scrape time through ``lag``, which
    gives (bucket, depth, age of the oldest entry in seconds) for each bucket."""

    def __init__(self, lag: Callable[[], Iterable[tuple[int, int, float]]]) -> None:
        self._lag = lag

    def collect(self) -> Iterator[Metric]:
        """The gauges, read now (none while the store does not answer)."""
        try:
            rows = list(self._lag())
        except Exception:
            return
        depth = GaugeMetricFamily(
            "saga_archive_feed_depth", "Feed entries not yet copied to the SQL archive.", labels=["bucket"]
        )
        age = GaugeMetricFamily(
            "saga_archive_lag_seconds", "Age of the oldest feed entry not yet archived.", labels=["bucket"]
        )
        for bucket, entries, seconds in rows:
            depth.add_metric([str(bucket)], entries)
            age.add_metric([str(bucket)], seconds)
        yield depth
        yield age


@dataclass(frozen=True)
class BasicAuth:
    """The credentials a scraper must send (HTTP basic auth); :meth:`allows` compares them in
    constant time."""

    user: str
    password: str

    @classmethod
    def from_file(cls, user: str, password_file: str) -> BasicAuth:
        """``user`` with the password in ``password_file`` (surrounding whitespace dropped, as
        Prometheus's ``password_file`` does); ``OSError`` if it cannot be read, ``ValueError``
        if the user or the password is empty, :class:`SettingsError` if the file is readable by
        its group or by others (any local user could read the password: ``chmod 600`` it)."""
        with open(password_file, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & 0o044:
                raise SettingsError(
                    f"SAGA_METRICS_PASSWORD_FILE {password_file} is readable by "
                    f"{'group and others' if mode & 0o044 == 0o044 else 'group' if mode & 0o040 else 'others'} "
                    f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it"
                )
            password = f.read().strip()
        if not user or not password:
            raise ValueError(f"metrics basic auth needs a user and a non-empty password file ({password_file})")
        return cls(user, password)

    def allows(self, header: str) -> bool:
        """Whether an ``Authorization`` header carries these credentials."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = f"{self.user}:{self.password}".encode()
        return hmac.compare_digest(given, expected)


def _guarded(app: Any, auth: BasicAuth) -> Any:
    """``app`` (WSGI) answering 401 to a request without ``auth``'s credentials."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if auth.allows(str(environ.get("HTTP_AUTHORIZATION", ""))):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="saga metrics"'), ("Content-Type", "text/plain; charset=utf-8")],
        )
        return [b"401: these metrics need HTTP basic auth\n"]

    return guarded


class _QuietHandler(WSGIRequestHandler):
    """Logs no request line (a scrape every few seconds)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing."""


def start_server(
    port: int, registry: CollectorRegistry, addr: str = "0.0.0.0", auth: BasicAuth | None = None
) -> WSGIServer:
    """Serve ``registry`` on ``addr:port`` in a daemon thread, behind ``auth`` when given, until
    the returned server's ``shutdown()``; ``OSError`` when the port cannot be used."""
    family, *_, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    app = make_wsgi_app(registry)
    httpd = make_server(
        str(sockaddr[0]), port, _guarded(app, auth) if auth else app, Server, handler_class=_QuietHandler
    )
    threading.Thread(target=httpd.serve_forever, name="saga-metrics", daemon=True).start()
    return httpd


def serve(
    port: int,
    reads: Mapping[str, Callable[[], float]],
    lag: Callable[[], Iterable[tuple[int, int, float]]] | None = None,
    addr: str | None = None,
    *,
    user: str = "",
    password_file: str = "",
) -> bool:
    """Serve every process's metrics (this one's and its pool children's), the store gauges
    ``reads`` gives (and those registered by :func:`read_at_scrape`) and, with ``lag``, the
    archive feed's gauges, on ``port``; with ``password_file``, only to requests carrying
    ``user`` and that password. ``addr`` defaults to every interface with auth, else 127.0.0.1
    only: an endpoint without auth is never reachable from another machine. False (and one log
    line) when the port or the password file cannot be used: the worker runs on, without
    metrics."""
    auth = None
    if password_file or user:
        try:
            auth = BasicAuth.from_file(user, password_file)
        except SettingsError as exc:
            logger.error("metrics not served: %s", exc)
            return False
        except (OSError, ValueError) as exc:
            logger.error("metrics not served: %s; set SAGA_METRICS_USER and SAGA_METRICS_PASSWORD_FILE", exc)
            return False
    registry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(StoreGauges(reads))
    if lag is not None:
        registry.register(ArchiveGauges(lag))
    try:
        start_server(port, registry, addr or ("0.0.0.0" if auth else "127.0.0.1"), auth)
    except OSError as exc:
        logger.error("cannot serve metrics on port %d (%s); set SAGA_METRICS_PORT, or 0 to turn them off", port, exc)
        return False
    logger.info("metrics on :%d/metrics%s", port, " (basic auth)" if auth else "")
    return True


def mark_child_dead(pid: int | None) -> None:
    """A pool child exited: fold its live gauges away (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV) and pid:
        _safely(lambda: multiprocess.mark_process_dead(pid))  # type: ignore[no-untyped-call]


def remove_folder(folder: str | None) -> None:
    """Delete a folder :func:`prepare_multiprocess` made."""
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
