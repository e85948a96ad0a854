"""How the store talks to Redis: a client from a URL (one Redis or a Redis Cluster), one-line errors.

Nothing here knows what a run is; :mod:`saga.store.writes` builds every run operation on top.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from ..errors import SettingsError, StoreFull, StoreUnavailable
from ..settings import REDIS_URL_FORM, redact
from . import memory

#: A client of one Redis, or of a Redis Cluster (the store works the same on both).
Client = redis.Redis | RedisCluster
Pipeline = redis.client.Pipeline | ClusterPipeline

#: URL schemes that name a Redis Cluster explicitly (``redis://`` is detected: see :func:`connect`).
#: Connections a client opens at most; a caller past them waits up to POOL_TIMEOUT seconds.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 30.0
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def answers(url: str, timeout: float = 0.5) -> bool:
    """Whether a Redis at ``url`` answers PING within ``timeout`` seconds."""
    scheme, _, rest = url.partition("://")
    url = f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


class _TLSRefused(redis.RedisError):
    """The TLS handshake with Redis failed for good: the server's certificate is not trusted or
    names another host. Never retried (another try fails the same way); :func:`guard` turns it
    into :class:`StoreUnavailable`, so it never reaches a caller."""


class _TLSConnection(redis.SSLConnection):
    """A ``rediss://`` connection whose TLS handshake is bounded by the connect timeout (redis-py
    waits for it up to the read timeout, ``socket_timeout``), and whose certificate errors are
    :class:`_TLSRefused` instead of a connection error to retry: a server that does not speak TLS
    or a wrong certificate fails in seconds, not after every retry's full read timeout."""

    def _connect(self) -> socket.socket:
        read_timeout = self.socket_timeout
        self.socket_timeout = self.socket_connect_timeout
        try:
            sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        except ssl.SSLCertVerificationError as exc:
            raise _TLSRefused(exc.verify_message or str(exc)) from None
        finally:
            self.socket_timeout = read_timeout
        sock.settimeout(read_timeout)
        return sock


def _options(retries: int) -> dict[str, Any]:
    return {
        "decode_responses": True,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
    }


def same_server(url: str, other: str) -> bool:
    """Whether two Redis URLs name the same server and database (as the same user)."""
    try:
        a, b = urlsplit(url), urlsplit(other)
        return (a.scheme, a.hostname, a.port or 6379, a.username, a.password, a.path.strip("/") or "0") == (
            b.scheme,
            b.hostname,
            b.port or 6379,
            b.username,
            b.password,
            b.path.strip("/") or "0",
        ) and a.scheme in ("redis", "rediss")
    except ValueError:
        return False


def connect(url: str, retries: int) -> Client:
    """A client for ``url`` that retries connection errors ``retries`` times with backoff.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) names a node of a Redis Cluster; a
    plain ``redis://`` URL is asked (one ``INFO cluster``) whether it is one, so either works.
    ``memory://`` (or ``memory://<name>``) is this process's in-memory server (:mod:`saga.store.memory`).
    Raises :class:`SettingsError` for a URL that is not a Redis URL, :class:`StoreUnavailable`
    for a Redis that does not answer (the caller's :func:`guard` words it).
    """
    if memory.is_memory_url(url):  # the in-memory tier: this process's server for the URL
        return cast(redis.Redis, memory.client(url))
    scheme, _, rest = url.partition("://")
    try:
        if scheme in CLUSTER_SCHEMES:
            return _cluster(f"{CLUSTER_SCHEMES[scheme]}://{rest}", retries)
        tls = {"connection_class": _TLSConnection} if scheme == "rediss" else {}
        # a blocking pool: past MAX_CONNECTIONS a caller waits for a connection (redis-py's
        # default pool refuses it: a burst of waiters reading at once would fail)
        pool = redis.BlockingConnectionPool.from_url(
            url,
            **tls,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_TIMEOUT,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
            health_check_interval=30,
            **_options(retries),
        )
        client = redis.Redis(connection_pool=pool)
    except (ValueError, TypeError) as exc:  # TypeError: an option redis-py does not know
        raise SettingsError(f"SAGA_REDIS_URL {redact(url)!r} is not a Redis URL: {exc}; use {REDIS_URL_FORM}") from None
    try:
        clustered = client.info("cluster").get("cluster_enabled") == 1
    except TypeError as exc:  # an option in the URL that redis-py's connection does not take
        client.close()
        raise SettingsError(f"SAGA_REDIS_URL {redact(url)!r} is not a Redis URL: {exc}; use {REDIS_URL_FORM}") from None
    if not clustered:
        return client
    client.close()
    try:
        return _cluster(url, retries)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"SAGA_REDIS_URL {redact(url)!r} names a Redis Cluster: {exc}") from None


def connect_node(url: str) -> redis.Redis:
    """A client of the one Redis server at ``url``, cluster node or not (no cluster routing):
    for administering a node, e.g. forming a cluster."""
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10)


def _cluster(url: str, retries: int) -> RedisCluster:
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has database 0 only; drop the /<db> from the URL")
    return RedisCluster.from_url(url, **_options(retries))


def load_script(client: Client, name: str) -> Script:
    """``saga/store/lua/<name>.lua``, registered on ``client``."""
    return client.register_script(resources.files("saga.store").joinpath("lua", f"{name}.lua").read_text())


@contextmanager
def guard(url: str) -> Iterator[None]:
    """Turn a connection error (after the client's retries) into a one-line
    :class:`StoreUnavailable`, and a write refused at ``maxmemory`` into :class:`StoreFull`,
    each naming the URL without its password."""
    try:
        yield
    except _TLSRefused as exc:
        raise StoreUnavailable(
            f"TLS to Redis at {redact(url)} failed: {str(exc).rstrip('.')}; fix the server's certificate, or name "
            "its CA in SAGA_REDIS_URL with ?ssl_ca_certs=/path/ca.pem"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError, RedisClusterException) as exc:
        tls = urlsplit(url).scheme.startswith("rediss") and isinstance(exc, redis.TimeoutError)
        hint = (
            "no TLS handshake: if that port is not a TLS port, use redis://"
            if tls
            else "start it or set SAGA_REDIS_URL"
        )
        raise StoreUnavailable(f"cannot reach Redis at {redact(url)} ({exc}); {hint}") from None
    except redis.exceptions.OutOfMemoryError:
        raise StoreFull(
            f"Redis at {redact(url)} is full (maxmemory reached) and refuses writes; free memory or raise "
            "maxmemory: nothing was written, and work goes on once it has room"
        ) from None
