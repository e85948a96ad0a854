"""The asyncio side of a store: its run reads, its scripts and its waiters over ``redis.asyncio``,
so a coroutine never blocks its event loop on Redis.

A ``redis.asyncio`` connection belongs to the event loop it was made in, so :class:`AsyncReads`
keeps one client (and one :class:`~saga.notify.AsyncWaiters`) per running loop, dropped with
the loop. Keys and shapes are the sync reads' (:class:`~saga.store.reads.RunReads` and its
:class:`~saga.store.Keyspace`): both read the same layout.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from ..core import FORMAT_FIELD, Event, SagaState, Shape, checked_format, codec, rebuild
from ..errors import RunNotFound
from .connection import CLUSTER_SCHEMES
from .notify import AsyncWaiters, async_client, subscriptions
from .reads import RunReads, checked_snapshot


@dataclass
class _LoopSide:
    client: Any
    waiters: AsyncWaiters
    scripts: dict[str, Any]


class AsyncReads:
    """The asyncio twin of ``reads``' run reads, plus script calls and waiters (see the module)."""

    def __init__(self, reads: RunReads) -> None:
        self.reads = reads
        self.keyspace = reads.keyspace
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSide] = weakref.WeakKeyDictionary()

    def _side(self) -> _LoopSide:
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            keyspace = self.keyspace
            sync_client = keyspace.client  # connects, detects a cluster, checks the layout (once)
            scheme, _, rest = keyspace.url.partition("://")
            options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 2, "socket_timeout": 10}
            if isinstance(sync_client, RedisCluster):
                client: Any = AsyncRedisCluster.from_url(f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}", **options)
            else:
                client = async_client(keyspace.url)
            channels = [b.done for b in keyspace.every_bucket]
            side = _LoopSide(client, AsyncWaiters(subscriptions(keyspace.url, sync_client, channels)), {})
            self._sides[loop] = side
        return side

    @property
    def waiters(self) -> AsyncWaiters:
        """The waiters of the running event loop."""
        return self._side().waiters

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run ``saga/store/lua/<name>.lua`` (the sync store's very script) with ``keys`` and ``args``."""
        side = self._side()
        script = side.scripts.get(name)
        if script is None:
            text = resources.files("saga.store").joinpath("lua", f"{name}.lua").read_text()
            script = side.scripts[name] = side.client.register_script(text)
        with self.keyspace.guarded():
            return await script(keys=list(keys), args=list(args))

    async def get(self, run_id: str) -> SagaState:
        """The latest state of a run in Redis; :class:`RunNotFound` if Redis has none,
        :class:`~saga.errors.StorageFormatTooNew` if its record is of a newer storage format."""
        with self.keyspace.guarded():
            snapshot = await self._side().client.get(self.keyspace.keys(run_id).snapshot)
        state = checked_snapshot(run_id, snapshot)
        if state is not None:
            return state
        return rebuild(await self.events(run_id))

    async def events(self, run_id: str) -> list[Event]:
        """Every event of a run in Redis, oldest first; :class:`RunNotFound` if Redis has none,
        :class:`~saga.errors.StorageFormatTooNew` if its record is of a newer storage format."""
        keys = self.keyspace.keys(run_id)
        with self.keyspace.guarded():
            (fingerprint, stored), raw = await self._both(
                lambda pipe: (pipe.hmget(keys.meta, ["fingerprint", FORMAT_FIELD]), pipe.lrange(keys.events, 0, -1))
            )
        checked_format(run_id, stored)
        if not raw:
            raise RunNotFound(run_id)
        shape = await self._shape(run_id, fingerprint) if fingerprint else None
        return codec.unpack(run_id, raw, shape)

    async def _both(self, queue: Callable[[Any], object]) -> list[Any]:
        """The replies of the commands ``queue`` puts on a pipeline, in one round trip."""
        async with self._side().client.pipeline(transaction=False) as pipe:
            queue(pipe)
            return cast(list[Any], await pipe.execute())

    async def _shape(self, run_id: str, fingerprint: str) -> Shape | None:
        shape = self.reads.known_shape(fingerprint)
        if shape is None:
            with self.keyspace.guarded():
                raw = await self._side().client.hget(self.keyspace.bucket_keys(run_id).shapes, fingerprint)
            if raw is None:
                return None
            shape = self.reads.learn_shape(fingerprint, Shape.from_list(json.loads(raw)))
        return shape
