"""Test set-up: a private redis-server for the whole session, the default registry configured to
use it, and an in-process Celery worker.

Redis: TEST_REDIS_URL if set (for matrix runs against another server), else a redis-server the
suite starts itself on a free port. Broker: TEST_BROKER_URL if set (e.g. RabbitMQ), else that
Redis. Nothing edits the environment: the default registry is configured here, before any test
module declares a saga, and worker subprocesses get ``worker_env(settings)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from saga import Settings
from saga.registry import default_registry
from saga.testing import RedisServer

_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        _server = RedisServer(appendonly=True).start()
        url = _server.url
    broker = os.environ.get("TEST_BROKER_URL", url)
    default_registry().configure(Settings(redis_url=url, broker_url=broker, lease_seconds=2, metrics_port=0))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.close()


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
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test Redis."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker() -> Iterator[Any]:
    """One in-process Celery worker (threads pool) running every test saga."""
    from celery.contrib.testing.worker import start_worker

    from tests.sagas import app

    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, shutdown_timeout=30, loglevel="WARNING"
    ) as w:
        yield w
