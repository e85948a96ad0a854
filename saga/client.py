"""The calls that start and read a saga's runs, sync and asyncio: what code that *uses* a saga
calls (a web handler, a script, a test). :class:`~saga.Saga` inherits them.

The ``*_async`` twins never block the event loop: they talk to Redis over ``redis.asyncio``
(:mod:`saga.store.aio`), run the very scripts the sync calls run, and wait on the commit's
notification (:mod:`saga.store.notify`). Two things still run in a worker thread
(``asyncio.to_thread``), because their libraries are sync: publishing a start's first message
when the broker is not the store's own Redis (RabbitMQ, another Redis: with the same Redis the
message is pushed by the start's own script, no publish at all), and reading a run that left
Redis for the SQL archive.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from .core import Event, JSONObject, SagaState, codec, rebuild
from .engine import commit as engine
from .engine import runs
from .errors import RunNotFound, SagaTimeout
from .registry import Registry
from .settings import Settings
from .store import CreateOutcome, RedisStore
from .tiers import Tiers

T = TypeVar("T")


class RunClient(ABC):
    """Starting and reading runs of one saga: the base of :class:`~saga.Saga`, which supplies
    the saga's name, registry, settings and store (a subclass without them cannot be made)."""

    name: str
    registry: Registry

    @property
    @abstractmethod
    def settings(self) -> Settings:
        """The settings the saga runs with."""

    @property
    @abstractmethod
    def store(self) -> RedisStore:
        """The coordinator's store (the saga's)."""

    @property
    def tiers(self) -> Tiers:
        """Reads of this saga's runs: Redis first, then the archive for runs that left it."""
        return Tiers(self.store, self.registry.archive_for(self.settings))

    def _new_run(
        self, payload: JSONObject, key: str | None, tags: Mapping[str, str] | None, deadline: float | None
    ) -> runs.NewRun:
        latest = self.registry.get(self.name)
        seconds = deadline if deadline is not None else getattr(latest, "deadline", None)
        return runs.prepare_start(latest.runtime(), payload, key, tags, seconds)

    # --- sync ------------------------------------------------------------------------------

    def start(
        self,
        payload: JSONObject,
        *,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> str:
        """Start a run under the highest version of this saga declared in the process, and
        return its id.

        With ``key``, the run id is derived from (saga, key): starting again with the same key
        and payload returns the same id and starts nothing, also when processes race; the same
        key with another payload raises :class:`~saga.KeyConflict`; :meth:`find` looks the run
        up by its key. ``tags`` (string keys and values, e.g. ``{"customer": "c-42"}``) are on
        :attr:`SagaState.tags`, in the ``saga.started`` event, and searchable in the archive
        (:func:`saga.find_runs`). A payload that is not a JSON object, or tags that are not
        strings, raise :class:`~saga.InvalidPayload` before anything is written.

        ``deadline``: seconds from now (default: the saga's ``deadline``). A run not finished by
        then is cancelled by the watchdog: nothing new starts forward, a running attempt's
        result is discarded, its committed steps are compensated, and it ends ``compensated``
        with a ``DeadlineExceeded`` error and a ``saga.deadline_exceeded`` event.
        Compensations have no deadline.
        """
        new = self._new_run(payload, key, tags, deadline)
        rt = new.rt
        outcome = rt.store.create(
            rt.definition.shape, new.start, key, check_at=new.check_at, message=new.message, deadline=new.deadline
        )
        if runs.started(new, outcome):
            engine.dispatch(rt, new.start.state, first=True)
        return new.run_id

    def get(self, run_id: str) -> SagaState:
        """The run's latest state, from Redis or the archive; :class:`~saga.RunNotFound` for an
        unknown id."""
        return self.tiers.get(run_id)

    def find(self, key: str) -> SagaState:
        """The run of this saga started with business key ``key`` (``start(..., key=key)``);
        :class:`~saga.RunNotFound` if there is none."""
        return self.get(runs.run_id_for_key(self.name, key))

    def wait(self, run_id: str, timeout: float = 30.0) -> SagaState:
        """Block until the run is completed, compensated or failed, and return that state.

        Woken by the notification of the commit that ends the run (no polling; a read every
        30 s is the fallback for a lost notification). Raises :class:`~saga.SagaTimeout` (a
        ``TimeoutError``) when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        state = self.tiers.get(run_id)
        if state.status.terminal:  # ended already: no subscription to set up
            return state
        waiters = self.store.waiters
        with waiters.watching(run_id) as woken:
            while True:
                woken.clear()
                state = self.tiers.get(run_id)
                remaining = deadline - time.monotonic()
                if state.status.terminal:
                    return state
                if remaining <= 0:
                    raise _timeout(run_id, state, timeout)
                woken.wait(min(remaining, waiters.poll_interval()))

    def history(self, run_id: str) -> list[SagaState]:
        """Every version of the run, oldest first (versions 1..n without gaps)."""
        return self.tiers.history(run_id)

    def events(self, run_id: str) -> list[Event]:
        """Every event of the run, oldest first."""
        return self.tiers.events(run_id)

    def rebuild(self, run_id: str) -> SagaState:
        """The run's state computed from its events alone; equal to :meth:`get`."""
        return rebuild(self.tiers.events(run_id))

    # --- asyncio ---------------------------------------------------------------------------

    async def start_async(
        self,
        payload: JSONObject,
        *,
        key: str | None = None,
        tags: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> str:
        """:meth:`start` for coroutines: the same checks, the same script, the same id."""
        new = self._new_run(payload, key, tags, deadline)
        rt = new.rt
        keys, args = rt.store.create_call(
            rt.definition.shape, new.start, key, check_at=new.check_at, message=new.message, deadline=new.deadline
        )
        outcome = CreateOutcome(await rt.store.aio.script("create", keys, args))
        if runs.started(new, outcome):
            await asyncio.to_thread(engine.dispatch, rt, new.start.state, first=True)
        return new.run_id

    async def _tiered(self, in_redis: Callable[[str], Awaitable[T]], in_tiers: Callable[[str], T], run_id: str) -> T:
        """``in_redis(run_id)`` over ``redis.asyncio``; for a run no longer in Redis, the same
        read of :attr:`tiers` (the archive) in a worker thread."""
        try:
            return await in_redis(run_id)
        except RunNotFound:
            if self.tiers.archive is None:
                raise
            return await asyncio.to_thread(in_tiers, run_id)

    async def get_async(self, run_id: str) -> SagaState:
        """:meth:`get` for coroutines."""
        return await self._tiered(self.store.aio.get, self.tiers.get, run_id)

    async def find_async(self, key: str) -> SagaState:
        """:meth:`find` for coroutines."""
        return await self.get_async(runs.run_id_for_key(self.name, key))

    async def wait_async(self, run_id: str, timeout: float = 30.0) -> SagaState:
        """:meth:`wait` for coroutines: woken by the same notification, on this event loop."""
        deadline = time.monotonic() + timeout
        state = await self.get_async(run_id)
        if state.status.terminal:
            return state
        waiters = self.store.aio.waiters
        async with waiters.watching(run_id) as woken:
            while True:
                woken.clear()
                state = await self.get_async(run_id)
                remaining = deadline - time.monotonic()
                if state.status.terminal:
                    return state
                if remaining <= 0:
                    raise _timeout(run_id, state, timeout)
                try:
                    async with asyncio.timeout(min(remaining, waiters.poll_interval())):
                        await woken.wait()
                except TimeoutError:
                    pass

    async def events_async(self, run_id: str) -> list[Event]:
        """:meth:`events` for coroutines."""
        return await self._tiered(self.store.aio.events, self.tiers.events, run_id)

    async def history_async(self, run_id: str) -> list[SagaState]:
        """:meth:`history` for coroutines."""
        return codec.history(await self.events_async(run_id))


def _timeout(run_id: str, state: SagaState, timeout: float) -> SagaTimeout:
    return SagaTimeout(f"run {run_id} still {state.status.value} at step {state.current_step} after {timeout}s")
