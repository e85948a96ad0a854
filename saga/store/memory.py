"""The in-memory tier: ``SAGA_REDIS_URL=memory://`` (or ``memory://<name>``) keeps runs in this
process, in fakeredis, which runs the very same scripts of ``saga/store/lua/`` under its Lua (lupa).

It is for unit tests and short single-process jobs: nothing is durable, and nothing outside this
process sees the data. A saga app on this tier runs in Celery's eager mode (see
:data:`EAGER_CONFIG`): ``start()`` runs every step inline and returns once the run has finished.

Steps run one after another, not one inside another: :func:`in_order` queues the sends a task
run inline makes until it has ended, so a run of any length runs in constant stack depth.

One in-memory server per URL per process: every client made for ``memory://<name>`` (the
store's, a test's reader, the CLI's in the same process) reaches the same server, and
``memory://a`` and ``memory://b`` are two servers. The servers are fakeredis's own, from its
per-process table of servers by key (``FakeServer.get_server``); this module keeps no state.

fakeredis and lupa come with the ``memory`` extra (``pip install 'saga[memory]'``); without
them a memory URL fails with a one-line :class:`~saga.errors.StoreUnavailable` saying so.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import StoreUnavailable
from ..settings import is_memory_url, memory_name

__all__ = [
    "EAGER_CONFIG",
    "MEMORY_BROKER",
    "async_client",
    "client",
    "in_order",
    "is_memory_url",
    "server_key",
    "tier_config",
]

#: kombu's in-memory transport: the broker of an app on this tier (eager mode publishes nothing).
MEMORY_BROKER = "memory://"

#: What a Celery app of this tier runs with: every ``apply_async`` runs the task inline, at once
#: (a retry's countdown is not waited), and an error that escapes a task is raised to the sender.
EAGER_CONFIG: dict[str, Any] = {
    "task_always_eager": True,
    "task_eager_propagates": True,
    "broker_url": MEMORY_BROKER,
}

#: The Redis version the in-memory server answers as (the scripts need 5 or later; 7 has every
#: command they use).
VERSION = (7, 4)


class _Inline(threading.local):
    """This thread's sends waiting for the task run inline now to end (None: no task runs)."""

    pending: deque[Callable[[], object]] | None = None
    releasing: bool = False


_inline = _Inline()  # per-thread call-stack state, like a context variable: no setting lives here


def in_order(eager: bool, send: Callable[[], object]) -> bool:
    """Make an eager app's task sends run one after another, as workers would run them, instead
    of each inside the task that sent it (which would nest a run's steps, retries and
    compensations until Python's recursion limit). Call it first thing when about to send, with
    ``send`` doing that very send again.

    Returns False when the caller should send now: not ``eager``, or ``send`` is being run from
    the queue. Otherwise True, the send taken care of: inside a task run inline, ``send`` is
    queued to run once that task has ended; outside any, ``send`` runs now, and then every send
    it queued, in order, before this returns.
    """
    if not eager:
        return False
    if _inline.releasing:
        _inline.releasing = False
        return False
    if _inline.pending is not None:
        _inline.pending.append(send)
        return True
    _inline.pending = deque([send])
    try:
        while _inline.pending:
            nxt = _inline.pending.popleft()
            _inline.releasing = True
            nxt()
    finally:
        _inline.pending, _inline.releasing = None, False
    return True


def tier_config(redis_url: str) -> dict[str, Any]:
    """The Celery settings a store at ``redis_url`` adds to the usual ones: :data:`EAGER_CONFIG`
    for the in-memory tier, nothing for Redis."""
    return dict(EAGER_CONFIG) if is_memory_url(redis_url) else {}


def server_key(url: str) -> str:
    """The key of the in-memory server ``url`` names in fakeredis's table of servers."""
    return f"saga-memory:{memory_name(url)}"


def client(url: str) -> Any:
    """A client (a ``redis.Redis``, decoding replies) of the in-memory server ``url`` names:
    the same server for every client of the same URL in this process. Its pub/sub works too
    (a ``PUBLISH`` from a script reaches the subscribers of any client of the URL)."""
    fakeredis = _fakeredis(url)
    return fakeredis.FakeRedis(server=_server(fakeredis, url), version=VERSION, decode_responses=True)


def async_client(url: str) -> Any:
    """A ``redis.asyncio`` client (decoding replies) of the same in-memory server as
    :func:`client` for ``url``."""
    fakeredis = _fakeredis(url)
    return fakeredis.FakeAsyncRedis(server=_server(fakeredis, url), version=VERSION, decode_responses=True)


def _server(fakeredis: Any, url: str) -> Any:
    """The process's in-memory server for ``url`` (made on first use)."""
    return fakeredis.FakeServer.get_server(server_key(url), VERSION, "redis")


def _fakeredis(url: str) -> Any:
    """The fakeredis module, or a one-line :class:`StoreUnavailable` saying how to install it."""
    try:
        import fakeredis  # an optional dependency: the ``memory`` extra
        import lupa  # noqa: F401 - fakeredis runs scripts only with it
    except ImportError:
        raise StoreUnavailable(f"SAGA_REDIS_URL {url!r} needs fakeredis with Lua: pip install 'saga[memory]'") from None
    return fakeredis
