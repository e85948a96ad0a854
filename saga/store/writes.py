"""The Redis store, composed of its parts (its keyspace, one run's reads, the operations over many
runs, the asyncio side), and the writes of one run's life: create, begin, commit, retry, note,
park, renew, a cancel request (the indexes' own upkeep is :mod:`saga.store.indexes`).

The key layout and the scripts' replies are in :mod:`saga.store.schema`, how events are stored in
:mod:`saga.core.codec`, the scripts themselves in ``saga/store/lua/``, each headed with its KEYS, ARGV and
reply. Every script touches one run and its bucket's indexes, which share one hash tag, so each
runs on one Redis Cluster slot. The store decides nothing: retention and watchdog deadlines
arrive as arguments (:mod:`saga.core.policy` computes them).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..core import (
    STORAGE_FORMAT,
    Direction,
    Event,
    EventType,
    SagaState,
    Shape,
    Status,
    Transition,
    codec,
    payload_hash,
)
from ..errors import StorageFormatTooNew
from ..settings import DEFAULT_BUCKETS
from .aio import AsyncReads
from .connection import same_server
from .indexes import Indexes
from .keyspace import Keyspace
from .notify import Waiters, subscriptions
from .reads import RunReads, snapshot_state
from .schema import (
    PLAIN_COMMIT,
    Begin,
    BeginOutcome,
    BucketKeys,
    CommitOptions,
    CommitReason,
    CommitResult,
    CreateOutcome,
    Message,
    ParkOutcome,
)

#: Statuses whose runs keep no snapshot: their events are their whole record.
_SETTLED = frozenset({Status.COMPLETED, Status.COMPENSATED})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _packer(state: SagaState) -> codec.Packer:
    """Packs events that follow ``state``."""
    last = state.checkpoints[-1].hash if state.checkpoints else None
    return codec.Packer(codec.micros(state.created_at), last, state.version)


class RedisStore:
    """Runs, their events, leases and dead letters in one Redis or one Redis Cluster.

    A store is composed of parts that share one :class:`~saga.store.Keyspace` (``keyspace``: the
    connection, opened on first use, the scripts and the key names): the reads of one run
    (``reads``, :class:`~saga.store.reads.RunReads`) and their asyncio twin (``aio``), the
    operations over many runs (``indexes``: watchdog list, lock, parked runs, dead letters,
    listing; :class:`~saga.store.Indexes`), and, here, the writes to one run and its waiters.

    Guarantees: each transition is committed by one script call (one round trip) that also
    moves the run in its bucket's indexes, so a reader sees a run either before or after it,
    never half-way, and a commit that lost a race changes nothing at all. The latest state of
    an unfinished (or failed) run is kept as a snapshot; every other version, and every version
    of a completed or compensated run, is rebuilt from its events. Connection errors are retried
    with backoff (``retries``), then raised as :class:`StoreUnavailable` with a one-line message.
    """

    def __init__(
        self, url: str, *, prefix: str = "saga", retries: int = 8, buckets: int = DEFAULT_BUCKETS, feed: bool = False
    ) -> None:
        #: the connection, scripts and key names every part shares
        self.keyspace = Keyspace(url, prefix=prefix, retries=retries, buckets=buckets)
        #: the reads of one run
        self.reads = RunReads(self.keyspace)
        #: the operations over many runs
        self.indexes = Indexes(self.keyspace)
        #: the store's reads, scripts and waiters for coroutines (:mod:`saga.store.aio`)
        self.aio = AsyncReads(self.reads)
        #: Whether every script that commits a transition also appends the run to its bucket's
        #: archive feed (an archive is configured).
        self.feed = feed
        self._pushes: dict[str, bool] = {}
        self._waiters: Waiters | None = None
        self._waiters_lock = threading.Lock()

    # --- writing ---------------------------------------------------------------------------

    def create(
        self,
        shape: Shape,
        start: Transition,
        key: str | None,
        *,
        check_at: float,
        message: Message | None = None,
        deadline: float | None = None,
    ) -> CreateOutcome:
        """Write a new run from its start transition, listed as pending and due for the watchdog
        at ``check_at``, recording the definition's shape (and, with a start ``key``, a hash of
        the start payload); with ``message``, push its first task's message in the same script
        (see :meth:`pushes_messages`). A run with this id already there is left as it is (and
        nothing is pushed): ``EXISTS`` when it was started with the same payload, ``CONFLICT``
        when with another. ``deadline`` (seconds since the epoch) is when forward steps stop
        being begun."""
        keys, args = self.create_call(shape, start, key, check_at=check_at, message=message, deadline=deadline)
        with self.keyspace.guarded():
            return CreateOutcome(self.keyspace.script("create")(keys=keys, args=args))

    def create_call(
        self,
        shape: Shape,
        start: Transition,
        key: str | None,
        *,
        check_at: float,
        message: Message | None = None,
        deadline: float | None = None,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``create.lua`` for :meth:`create` (also run by the asyncio
        client over its own connection)."""
        state = start.state
        k, b = self.keyspace.keys(state.id), self.keyspace.bucket_keys(state.id)
        started_us = codec.micros(state.created_at)
        args = [
            state.id,
            state.saga,
            shape.fingerprint,
            _dumps(shape.to_list()),
            _dumps(state.to_dict()),
            codec.Packer(started_us, None, 0).pack(start.events[0]),
            "1" if self.feed else "",
            state.status.value,
            state.current_step,
            state.definition_version,
            payload_hash(state.payload) if key else "",
            started_us,
            time.time(),
            check_at,
            message.body if message else "",
            "" if deadline is None else deadline,
            STORAGE_FORMAT,
        ]
        keys = [k.meta, k.events, b.active, b.status(state.status), b.shapes, k.snapshot, b.feed]
        if message is not None:
            keys.append(message.key)
        return keys, args

    def begin(
        self,
        run_id: str,
        direction: Direction,
        index: int,
        *,
        attempt: int,
        lease_ms: int,
        fingerprint: str,
        check_at: float,
        lane: str = "",
        cursor: int | None = None,
    ) -> Begin:
        """Decide whether a delivery may run its body, taking the lease if so and recording its
        started event (see begin.lua). In the same round trip an unfinished run's watchdog
        deadline becomes ``check_at``, so the watchdog follows every lease, the first step's
        too. ``fingerprint`` '' runs a compensation by name for an operator's unwind. A member of
        a parallel group begins in its ``lane`` while the run's cursor is on the group's first
        member (``cursor``).

        The state comes with ``RUN``, ``DONE`` and ``DRIFT``, except for a completed or
        compensated run (it keeps no snapshot; nothing runs for it).
        :class:`~saga.errors.StorageFormatTooNew` (nothing written) when the run's record names a
        storage format newer than this saga reads.
        """
        k, b = self.keyspace.keys(run_id), self.keyspace.bucket_keys(run_id)
        kind = EventType.STEP_STARTED if direction is Direction.FORWARD else EventType.COMPENSATION_STARTED
        now_us = time.time_ns() // 1000
        args = [
            direction.value,
            index,
            lease_ms,
            attempt,
            fingerprint,
            codec.CODES[kind],
            now_us,
            check_at,
            run_id,
            lane,
            index if cursor is None else cursor,
            STORAGE_FORMAT,
        ]
        with self.keyspace.guarded():
            outcome, snapshot, token, n, extra = self.keyspace.script("begin")(
                keys=[k.meta, k.events, k.lease_of(lane), b.active, k.snapshot], args=args
            )
        result = BeginOutcome(outcome)
        if result is BeginOutcome.FORMAT:
            raise StorageFormatTooNew(run_id, str(extra), STORAGE_FORMAT)
        return Begin(
            result,
            snapshot_state(snapshot),
            token,
            int(n),
            idle=result is BeginOutcome.DONE and extra == "1",
            stored_fingerprint=extra if result is BeginOutcome.DRIFT else "",
        )

    def commit(
        self,
        before: SagaState,
        transition: Transition,
        options: CommitOptions = PLAIN_COMMIT,
        *,
        check_at: float | None,
        ttl_ms: int = 0,
        message: Message | None = None,
    ) -> CommitResult:
        """Commit one transition (see commit.lua): the new snapshot, its events, and as
        ``options`` say the step's dedup mark, the lease released, a dead-letter entry; the run
        moves to its new status's index and its watchdog deadline becomes ``check_at`` (None:
        off the list, it is finished). Its keys expire after ``ttl_ms`` (0: kept). With
        ``message``, the next task's message is pushed to the broker in the same script, unless
        the run goes on running while an operator asked to cancel it (the result's ``cancel``
        says so, and the caller cancels). If the
        version moved or the token no longer holds the run, nothing at all is written or pushed.
        """
        after = transition.state
        o = options
        moved = (after.current_step, after.status) != (before.current_step, before.status)
        settled = after.status in _SETTLED
        flags = "".join(
            flag
            for flag, on in (
                ("r", o.release),
                ("a", moved),
                ("i", o.refuse_while_leased),
                ("u", o.operator_unwind),
                ("f", settled),
                ("x", self.feed),
                ("k", o.fence_all),
                ("g", o.grouped and after.current_step != before.current_step),
                (self.notify_flag, after.status.terminal and not before.status.terminal),
            )
            if on
        )
        k, b = self.keyspace.keys(after.id), self.keyspace.bucket_keys(after.id)
        packer = _packer(before)
        keys = [
            k.meta,
            k.events,
            k.lease_of(o.lane),
            b.active,
            b.status(before.status),
            b.status(after.status),
            b.dlq,
            b.dlq_index,
            k.snapshot,
            b.feed,
            message.key if message else k.lease,
            *(k.lease_of(lane) for lane in o.watch),
        ]
        args = [
            before.version,
            o.token,
            after.version,
            "" if settled else _dumps(after.to_dict()),
            after.status.value,
            after.current_step,
            f"d:{o.dedup_mark}" if o.dedup_mark else "",
            flags,
            ttl_ms,
            _dumps(o.dead_entry) if o.dead_entry else "",
            o.dead_entry["id"] if o.dead_entry else "",
            time.time(),
            "" if check_at is None else check_at,
            after.id,
            message.body if message else "",
            o.lane,
            b.done,
            *(packer.pack(e) for e in transition.events),
        ]
        with self.keyspace.guarded():
            reply = self.keyspace.script("commit")(keys=keys, args=args)
        applied = bool(reply[0])
        return CommitResult(applied, CommitReason(reply[1]), str(reply[2]) if applied else "")

    def record_retry(
        self, state: SagaState, token: str, events: Sequence[Event], lease_value: str, lease_ms: int, lane: str = ""
    ) -> bool:
        """Append a fenced attempt's retry events (snapshot-neutral) and hand its lease (its
        ``lane``'s, in a parallel group) to the retry that follows (see record.lua); False when
        the token no longer holds the run."""
        k, packer = self.keyspace.keys(state.id), _packer(state)
        fence_field = f"fence:{lane}" if lane else "fence"
        with self.keyspace.guarded():
            ok = self.keyspace.script("record")(
                keys=[k.meta, k.events, k.lease_of(lane)],
                args=[token, lease_value, lease_ms, fence_field, *map(packer.pack, events)],
            )
        return bool(ok)

    def note_events(
        self,
        state: SagaState,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        require_idle: bool = False,
        fence: bool = False,
        unpark: bool = False,
        check_at: float | None = None,
        lane: str = "",
    ) -> tuple[bool, str]:
        """Append snapshot-neutral events for the coordinator to the run of ``state``: a resume,
        an operator's note (see note.lua). With ``fence``, take a new fencing token, so a zombie
        attempt of the old one can no longer commit; with ``unpark``, the run leaves the parked
        runs; with ``check_at``, that becomes its watchdog deadline — all in one script. With a
        ``lane``, the idle check and the fence are that parallel group lane's.

        Returns ``(True, new token or '')`` or ``(False, reason)``.
        """
        k, b, packer = self.keyspace.keys(state.id), self.keyspace.bucket_keys(state.id), _packer(state)
        args = [
            "" if expected_version is None else expected_version,
            "1" if require_idle else "0",
            "1" if fence else "0",
            "1" if unpark else "0",
            state.id,
            "" if check_at is None else check_at,
            lane,
            *map(packer.pack, events),
        ]
        with self.keyspace.guarded():
            ok, detail = self.keyspace.script("note")(
                keys=[k.meta, k.events, k.lease_of(lane), b.parked, b.active, *self._feed(b)], args=args
            )
        return bool(ok), str(detail)

    def park(self, state: SagaState, event: Event, reason: str) -> ParkOutcome:
        """Park a run no worker here can move (see park.lua): its ``saga.parked`` event and reason
        are recorded, and it joins its bucket's parked runs, unless an attempt holds it or it
        moved."""
        k, b = self.keyspace.keys(state.id), self.keyspace.bucket_keys(state.id)
        args: list[str | int | float] = [reason, state.version, _packer(state).pack(event), time.time(), state.id]
        with self.keyspace.guarded():
            return ParkOutcome(
                self.keyspace.script("park")(keys=[k.meta, k.events, k.lease, b.parked, *self._feed(b)], args=args)
            )

    def _feed(self, b: BucketKeys) -> list[str]:
        """The feed key a script appends the run to, as its optional last key: none without an
        archive."""
        return [b.feed] if self.feed else []

    @property
    def waiters(self) -> Waiters:
        """The threads of this process waiting for runs to finish (subscribed on first use to
        every bucket's channel; see :mod:`saga.store.notify`)."""
        with self._waiters_lock:
            if self._waiters is None:
                channels = [b.done for b in self.keyspace.every_bucket]
                self._waiters = Waiters(subscriptions(self.keyspace.url, self.keyspace.client, channels))
            return self._waiters

    @property
    def notify_flag(self) -> str:
        """commit.lua's flag that tells a run's bucket channel it became terminal: 's' (SPUBLISH)
        on a cluster, where a sharded channel stays on the bucket's slot, else 'p' (PUBLISH:
        servers before Redis 7 have no sharded channels)."""
        return "s" if self.keyspace.on_cluster else "p"

    def pushes_messages(self, broker_url: str) -> bool:
        """Whether task messages for the broker at ``broker_url`` can be pushed by this store's
        scripts: the broker is this very Redis (same server and database) and not a cluster."""
        if broker_url not in self._pushes:
            self._pushes[broker_url] = same_server(self.keyspace.url, broker_url) and not self.keyspace.on_cluster
        return self._pushes[broker_url]

    def request_cancel(self, run_id: str, reason: str) -> None:
        """Ask the attempt running now to cancel the run when it commits."""
        with self.keyspace.guarded():
            self.keyspace.client.hset(self.keyspace.keys(run_id).meta, "cancel", reason or "cancelled")

    def renew(self, run_id: str, token: str, lease_ms: int, lane: str = "") -> bool:
        """Extend a lease (``lane``'s, in a parallel group) that still carries ``token``."""
        with self.keyspace.guarded():
            k = self.keyspace.keys(run_id)
            return bool(self.keyspace.script("renew")(keys=[k.lease_of(lane), k.meta], args=[token, lease_ms]))
