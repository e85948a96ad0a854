"""Test set-up: a private redis-server for the whole session, the default registry configured to
use it, and an in-process Celery worker.

Store: TEST_REDIS_URL if set (for matrix runs against another server); else, with
TEST_STORE=cluster, a 3-master Redis Cluster the suite starts itself (the broker then on a
private redis-server of its own: Celery cannot use a cluster); else a redis-server the suite
starts itself on a free port. Broker: TEST_BROKER_URL if set (e.g. RabbitMQ), else that Redis.
Nothing edits the environment: the default registry is configured here, before any test module
declares a saga, and worker subprocesses get ``worker_env(settings)``.

The saga pytest plugin (``saga.testing.pytest_plugin``, loaded from its entry point as for any user) is
on too: ``worker`` is its in-thread worker, and its fixtures (``saga_redis``, a private server
started only when a test asks; ``saga_settings``, ``saga_registry``, ``saga_worker``,
``saga_worker_process``, ``run_saga``) serve the contract tests, which override ``saga_settings``
and ``saga_registry`` for their own registry. A test that uses ``saga_registry`` unchanged
re-points the default registry, and so this suite's sagas: override it, as the contract tests do.
pytest-celery's fixtures (``celery_app``, ``celery_session_worker``, ...) are on as well; a test
of its Docker fixtures (``celery_setup``) goes under the ``docker`` marker, skipped when no Docker
engine answers. The suite needs no Docker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from saga import Settings
from saga.registry import default_registry
from saga.store import Client, connect
from saga.testing import RedisCluster, RedisServer, in_thread_worker

_server: RedisServer | None = None
_cluster: RedisCluster | None = None

#: Whether the store is a Redis Cluster in this session (TEST_STORE=cluster).
ON_CLUSTER = os.environ.get("TEST_STORE", "redis") == "cluster"


def pytest_configure(config: pytest.Config) -> None:
    global _server, _cluster
    url = os.environ.get("TEST_REDIS_URL")
    broker = os.environ.get("TEST_BROKER_URL")
    if not url:
        _server = RedisServer(appendonly=True).start()
        url = _server.url
        if ON_CLUSTER:
            _cluster = RedisCluster(3, appendonly=True).start()
            broker, url = broker or url, _cluster.url
    default_registry().configure(Settings(redis_url=url, broker_url=broker or url, lease_seconds=2, metrics_port=0))


def pytest_unconfigure(config: pytest.Config) -> None:
    for process in (_cluster, _server):
        if process is not None:
            process.close()


def pytest_report_header(config: pytest.Config) -> str:
    where = "a 3-master Redis Cluster" if ON_CLUSTER else "one Redis"
    return f"saga store: {where} at {default_registry().settings.redis_url}"


@pytest.fixture(scope="session")
def redis_cluster() -> RedisCluster | None:
    """The suite's own Redis Cluster (TEST_STORE=cluster), else None."""
    return _cluster


@pytest.fixture(scope="session")
def redis_server() -> RedisServer | None:
    """The suite's own Redis server (None when TEST_REDIS_URL points elsewhere)."""
    return _server


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings the suite's default registry runs with."""
    return default_registry().settings


@pytest.fixture(scope="session")
def redis_url(settings: Settings) -> str:
    """URL of the coordinator's Redis."""
    return settings.redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Client]:
    """A client of the coordinator's Redis (a cluster client when the store is a cluster)."""
    client = connect(redis_url, retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def worker() -> Iterator[Any]:
    """An in-process Celery worker (threads pool) running every test saga: the in-thread worker
    of the plugin's ``saga_worker``, one per test module (a module that re-points the apps or
    stops workers cannot leave the next one without a consumer)."""
    from tests.sagas import app

    with in_thread_worker(app, concurrency=4, shutdown_timeout=90) as w:
        yield w
