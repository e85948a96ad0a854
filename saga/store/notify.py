"""Push-based waiting: the commit that makes a run terminal tells its bucket's channel the run id
(in the same script, ``commit.lua``), and a process's waiters are woken from one subscription.

A process subscribes once to every bucket's channel (one connection, or one per cluster node
holding a bucket's slot, with ``SSUBSCRIBE``): waiting costs no Redis command while nothing
happens, whatever the number of waiters. A notification can be missed only while a subscription
is down; every waiter is then woken to read its run again, and until the subscriptions are live
again waiters read every :data:`UNSUBSCRIBED_POLL` seconds. While live, a waiter still reads its
run every :data:`FALLBACK_POLL` seconds, a slow fallback for a notification lost otherwise.

:class:`Waiters` serves threads (a daemon listener thread per connection); :class:`AsyncWaiters`
serves the coroutines of one event loop (a listener task per connection, over ``redis.asyncio``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.cluster import RedisCluster

from ..errors import StoreUnavailable
from . import memory
from .connection import CLUSTER_SCHEMES, MAX_CONNECTIONS, POOL_TIMEOUT, Client, connect, connect_node

#: Seconds between a waiter's reads of its run while notifications arrive (a lost one's cost).
FALLBACK_POLL = 30.0
#: Seconds between a waiter's reads while a subscription is down.
UNSUBSCRIBED_POLL = 0.5
#: Seconds before a dropped subscription connects again.
RECONNECT_DELAY = 0.5

_log = logging.getLogger("saga.notify")

E = TypeVar("E", threading.Event, asyncio.Event)


@dataclass(frozen=True)
class Subscription:
    """The channels one connection subscribes to: ``url`` of the server (a cluster node, or the
    store itself) and whether the channels are sharded (``SSUBSCRIBE``)."""

    url: str
    channels: tuple[str, ...]
    sharded: bool


def subscriptions(url: str, client: Client, channels: Sequence[str]) -> list[Subscription]:
    """The subscriptions that hear every channel of ``channels``: one on a plain Redis; on a
    cluster one per node, each with the channels whose slot the node serves."""
    if not isinstance(client, RedisCluster):
        return [Subscription(url, tuple(channels), sharded=False)]
    by_node: dict[tuple[str, int], list[str]] = {}
    for channel in channels:
        node = client.get_node_from_key(channel)  # type: ignore[no-untyped-call]
        by_node.setdefault((node.host, int(node.port)), []).append(channel)
    return [Subscription(node_url(url, host, port), tuple(chs), sharded=True) for (host, port), chs in by_node.items()]


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (a store URL, cluster scheme or not) pointed at one server ``host:port``, with its
    credentials and TLS kept."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((scheme, netloc, "", parts.query, ""))


def async_client(url: str) -> Any:
    """A ``redis.asyncio`` client of the one server at ``url`` (the in-memory tier's for a
    ``memory://`` URL), for the running event loop."""
    if memory.is_memory_url(url):
        return memory.async_client(url)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_TIMEOUT, decode_responses=True, socket_connect_timeout=5
    )
    return redis.asyncio.Redis(connection_pool=pool)


def _dropped(sub: Subscription, exc: BaseException, *, was_live: bool) -> None:
    """Log a subscription that dropped (once: not again for each failed reconnect)."""
    log = _log.warning if was_live else _log.debug
    log("saga: waiter subscription to %s dropped (%s); reconnecting", sub.url.rpartition("@")[2], exc)


def _confirmation(message: Any) -> bool:
    """Whether ``message`` confirms a (sharded) subscription."""
    return isinstance(message, dict) and message.get("type") in ("subscribe", "ssubscribe")


def _run_id(message: Any) -> str | None:
    """The run id a channel message carries (None for a subscription reply)."""
    if not isinstance(message, dict) or message.get("type") not in ("message", "smessage"):
        return None
    data = message.get("data")
    return data.decode() if isinstance(data, bytes) else str(data)


class _Book(Generic[E]):
    """What both kinds of waiters keep: the subscriptions' plan and which are live, and the
    events of the waiters of each run (the caller guards it if threads share it)."""

    def __init__(self, plan: Sequence[Subscription]) -> None:
        self._plan = list(plan)
        self._events: dict[str, set[E]] = {}
        self._live: set[int] = set()

    @property
    def live(self) -> bool:
        """Whether every subscription is live (a notification cannot be missed now)."""
        return len(self._live) == len(self._plan)

    def poll_interval(self) -> float:
        """How long a waiter may wait for a notification before it reads its run again."""
        return FALLBACK_POLL if self.live else UNSUBSCRIBED_POLL

    def _forget(self, run_id: str, woken: E) -> None:
        events = self._events.get(run_id)
        if events is not None:
            events.discard(woken)
            if not events:
                del self._events[run_id]

    def _targets(self, run_id: str | None) -> list[E]:
        """The events of run ``run_id``'s waiters (every waiter's for None)."""
        if run_id is None:
            return [e for es in self._events.values() for e in es]
        return list(self._events.get(run_id, ()))


class Waiters(_Book[threading.Event]):
    """The threads of one process waiting for runs of one store (see the module)."""

    def __init__(self, plan: Sequence[Subscription]) -> None:
        super().__init__(plan)
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self._ready = threading.Condition(self._lock)

    @contextlib.contextmanager
    def watching(self, run_id: str, ready_timeout: float = 5.0) -> Iterator[threading.Event]:
        """An event set whenever run ``run_id`` may have become terminal (or a subscription
        dropped); subscribed before it is handed out, so a read after it misses nothing."""
        woken = threading.Event()
        with self._lock:
            self._events.setdefault(run_id, set()).add(woken)
            if not self._started:
                self._started = True
                for i, sub in enumerate(self._plan):
                    threading.Thread(target=self._listen, args=(i, sub), name="saga-waiters", daemon=True).start()
            self._ready.wait_for(lambda: self.live, timeout=ready_timeout)
        try:
            yield woken
        finally:
            with self._lock:
                self._forget(run_id, woken)

    def close(self) -> None:
        """Stop listening (the listener threads end at their next read)."""
        self._stopping.set()

    def _wake(self, run_id: str | None) -> None:
        with self._lock:
            for event in self._targets(run_id):
                event.set()

    def _listen(self, i: int, sub: Subscription) -> None:
        while not self._stopping.is_set():
            client: Any = None
            pubsub: Any = None
            try:
                client = connect_node(sub.url) if sub.sharded else connect(sub.url, retries=0)
                pubsub = client.pubsub()
                for channel in sub.channels:  # sharded: one slot per SSUBSCRIBE, each confirmed
                    (pubsub.ssubscribe if sub.sharded else pubsub.subscribe)(channel)
                    if not _confirmation(pubsub.get_message(timeout=10)):
                        raise redis.TimeoutError("no subscription confirmation")
                with self._lock:
                    self._live.add(i)
                    self._ready.notify_all()
                self._wake(None)  # anything committed before the subscription: read again
                while not self._stopping.is_set():
                    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    run_id = _run_id(message)
                    if run_id is not None:
                        self._wake(run_id)
            except (redis.RedisError, OSError, StoreUnavailable) as exc:
                _dropped(sub, exc, was_live=i in self._live)
            finally:
                with self._lock:
                    self._live.discard(i)
                self._wake(None)
                for closing in (pubsub, client):
                    with contextlib.suppress(Exception):
                        closing is not None and closing.close()
            self._stopping.wait(RECONNECT_DELAY)


class AsyncWaiters(_Book[asyncio.Event]):
    """The coroutines of one event loop waiting for runs of one store (see the module)."""

    def __init__(self, plan: Sequence[Subscription]) -> None:
        super().__init__(plan)
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watching(self, run_id: str, ready_timeout: float = 5.0) -> AsyncIterator[asyncio.Event]:
        """An event set whenever run ``run_id`` may have become terminal (or a subscription
        dropped); subscribed before it is handed out."""
        woken = asyncio.Event()
        self._events.setdefault(run_id, set()).add(woken)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._listen(i, sub)) for i, sub in enumerate(self._plan)]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ready_timeout):
                while not self.live:
                    self._changed.clear()
                    await self._changed.wait()
        try:
            yield woken
        finally:
            self._forget(run_id, woken)

    async def close(self) -> None:
        """Stop listening."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def _wake(self, run_id: str | None) -> None:
        for event in self._targets(run_id):
            event.set()

    async def _listen(self, i: int, sub: Subscription) -> None:
        while True:
            client = async_client(sub.url)
            pubsub = client.pubsub()
            try:
                for channel in sub.channels:
                    await (pubsub.ssubscribe(channel) if sub.sharded else pubsub.subscribe(channel))
                    if not _confirmation(await pubsub.get_message(timeout=10)):
                        raise redis.TimeoutError("no subscription confirmation")
                self._live.add(i)
                self._changed.set()
                self._wake(None)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    run_id = _run_id(message)
                    if run_id is not None:
                        self._wake(run_id)
            except (redis.RedisError, OSError) as exc:
                _dropped(sub, exc, was_live=i in self._live)
            finally:
                self._live.discard(i)
                self._changed.set()
                self._wake(None)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()
            await asyncio.sleep(RECONNECT_DELAY)
