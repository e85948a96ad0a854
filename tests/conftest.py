"""Test set-up: a private redis-server for the whole session, and an in-process Celery worker.

Redis: TEST_REDIS_URL if set (for matrix runs against another server), else a redis-server the
suite starts itself on a free port. Broker: TEST_BROKER_URL if set (e.g. RabbitMQ), else that Redis.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from saga.testing import RedisServer

_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _server
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        _server = RedisServer(appendonly=True).start()
        url = _server.url
    os.environ["SAGA_REDIS_URL"] = url
    os.environ["SAGA_BROKER_URL"] = os.environ.get("TEST_BROKER_URL", url)
    os.environ.setdefault("SAGA_LEASE_SECONDS", "2")
    os.environ.setdefault("SAGA_METRICS_PORT", "0")
    from saga.settings import get_settings

    get_settings.cache_clear()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.close()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer | None:
    """The suite's own Redis server (None when TEST_REDIS_URL points elsewhere)."""
    return _server


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the coordinator's Redis."""
    return os.environ["SAGA_REDIS_URL"]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test Redis."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker() -> Iterator[Any]:
    """One in-process Celery worker (threads pool) running every test saga."""
    from celery.contrib.testing.worker import start_worker

    from tests.sagas import app

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                      shutdown_timeout=30, loglevel="WARNING") as w:
        yield w


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def rebind(app: Any, broker_url: str) -> None:
    """Point a Celery app's publishing at another broker, dropping its pooled connections."""
    app.conf.broker_url = broker_url
    app._after_fork()  # what Celery does in a forked child: forget the connection pools
