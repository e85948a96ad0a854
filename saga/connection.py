"""How the store talks to Redis: a client from a URL, one-line errors, scripts in one round trip.

Nothing here knows what a run is; :mod:`saga.store` builds every run operation on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .errors import StoreFull, StoreUnavailable

Client = redis.Redis
Pipeline = redis.client.Pipeline


def redact(url: str) -> str:
    """A URL with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING within ``timeout`` seconds."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def connect(url: str, retries: int) -> Client:
    """A client for ``url`` that retries connection errors ``retries`` times with backoff;
    :class:`StoreUnavailable` for a URL that is not a Redis URL."""
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=10,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise StoreUnavailable(f"SAGA_REDIS_URL {redact(url)!r} is not a Redis URL: {exc}") from None


def load_script(client: Client, name: str) -> Script:
    """``saga/lua/<name>.lua``, registered on ``client``."""
    return client.register_script(resources.files("saga").joinpath("lua", f"{name}.lua").read_text())


@contextmanager
def guard(url: str) -> Iterator[None]:
    """Turn a connection error (after the client's retries) into a one-line
    :class:`StoreUnavailable`, and a write refused at ``maxmemory`` into :class:`StoreFull`,
    each naming the URL without its password."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"cannot reach Redis at {redact(url)} ({exc}); start it or set SAGA_REDIS_URL") from None
    except redis.exceptions.OutOfMemoryError:
        raise StoreFull(
            f"Redis at {redact(url)} is full (maxmemory reached) and refuses writes; free memory or raise "
            "maxmemory: nothing was written, and work goes on once it has room"
        ) from None


def eval_pipelined(
    client: Client, script: Script, keys: Sequence[str], args: Sequence[Any], more: Callable[[Pipeline], None]
) -> Any:
    """Run ``script`` and the commands ``more`` adds in one round trip; return the script's reply.

    EVALSHA is sent as is (redis-py's pipelined scripts would send SCRIPT EXISTS first, a round
    trip more); a Redis that forgot the script (NOSCRIPT, e.g. after a restart) gets it loaded,
    and the whole pipeline is sent again.
    """
    for loaded in (False, True):
        pipe = client.pipeline(transaction=False)
        pipe.evalsha(script.sha, len(keys), *keys, *args)
        more(pipe)
        try:
            return pipe.execute()[0]
        except redis.exceptions.NoScriptError:
            if loaded:
                raise
            client.script_load(script.script)
    raise AssertionError("unreachable")
