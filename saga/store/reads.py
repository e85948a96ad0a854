"""Reading one run: its latest state (the snapshot of an unfinished or failed run, else folded
from its events), any version of it, its events and its bookkeeping.

:class:`RunReads` reads through its store's :class:`~saga.store.Keyspace` (connection and key
names); a :class:`~saga.store.RedisStore` holds it as ``store.reads``, beside its writes, and
its asyncio twin (:mod:`saga.store.aio`) as ``store.aio``. Every read returns objects of its
own: a payload read here shares nothing with any other reader's.

Every read of a run's state, events or bookkeeping also reads its record's storage format (the
meta hash's ``format`` field, in the same round trip; a snapshot, the format it carries) and
refuses a newer one than this saga reads with :class:`~saga.errors.StorageFormatTooNew`;
nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TypeVar, cast

from ..core import FORMAT_FIELD, Event, SagaState, Shape, checked_format, codec, rebuild
from ..errors import RunNotFound, StorageFormatTooNew
from .keyspace import Keyspace
from .schema import Progress

T = TypeVar("T")


def snapshot_state(snapshot: str | None) -> SagaState | None:
    """The state a stored snapshot holds (None for none)."""
    return SagaState.from_dict(json.loads(snapshot)) if snapshot else None


def checked_snapshot(run_id: str, snapshot: str | None) -> SagaState | None:
    """The state run ``run_id``'s stored snapshot holds (None for none);
    :class:`StorageFormatTooNew` if the snapshot names a newer storage format than this saga's."""
    if not snapshot:
        return None
    data = json.loads(snapshot)
    checked_format(run_id, data.get(FORMAT_FIELD))
    return SagaState.from_dict(data)


class RunReads:
    """The reads of one run (see the module), on ``keyspace``. Shapes are read once per process:
    a fingerprint's shape never changes."""

    def __init__(self, keyspace: Keyspace) -> None:
        self.keyspace = keyspace
        self._shapes: dict[str, Shape] = {}

    def get(self, run_id: str) -> SagaState:
        """The latest state of a run."""
        state = self.snapshots([run_id])[0]
        if state is None:
            raise RunNotFound(run_id)
        return state

    def snapshots(self, run_ids: Sequence[str]) -> list[SagaState | None]:
        """The latest state of each run (None where there is no such run), in one round trip
        for runs with a snapshot and one more for those rebuilt from their events;
        :class:`StorageFormatTooNew` for the first run of a newer storage format."""
        return [_checked(state) for state in self.read_snapshots(run_ids)]

    def read_snapshots(self, run_ids: Sequence[str]) -> list[SagaState | None | StorageFormatTooNew]:
        """:meth:`snapshots`, but a run of a newer storage format is its refusal, in its place,
        so one such run does not hide the others (the watchdog's batch). A snapshot is checked
        by the ``format`` key every format after 1 writes into it (see :mod:`saga.core.formats`),
        so a run with a snapshot costs one GET and nothing more (a listing, the watchdog, a
        waiter's read); a run without one is rebuilt from its events, whose read checks the
        meta hash's field."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.get(self.keyspace.keys(run_id).snapshot)
            snapshots = cast(list[str | None], pipe.execute())
        states: list[SagaState | None | StorageFormatTooNew] = []
        for run_id, snapshot in zip(run_ids, snapshots, strict=True):
            try:
                states.append(checked_snapshot(run_id, snapshot))
            except StorageFormatTooNew as refused:
                states.append(refused)
        settled = [i for i, snapshot in enumerate(snapshots) if snapshot is None and states[i] is None]
        if settled:
            logs = self.read_logs([run_ids[i] for i in settled])
            for i, events in zip(settled, logs, strict=True):
                states[i] = events if isinstance(events, StorageFormatTooNew) else rebuild(events) if events else None
        return states

    def labels(self, run_ids: Sequence[str]) -> list[tuple[str, int] | None]:
        """The saga name and definition version of each run (None where there is no such run),
        in one round trip."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.hmget(self.keyspace.keys(run_id).meta, ["saga", "sv"])
            rows = cast(list[list[str | None]], pipe.execute())
        return [(saga, int(sv or 1)) if saga else None for saga, sv in rows]

    def events(self, run_id: str) -> list[Event]:
        """Every event of a run, oldest first."""
        events = self.logs([run_id])[0]
        if not events:
            raise RunNotFound(run_id)
        return events

    def history(self, run_id: str) -> list[SagaState]:
        """The run at every version, oldest first, rebuilt from its events (each state with a
        payload of its own)."""
        return codec.history(self.events(run_id))

    def at_version(self, run_id: str, version: int) -> SagaState:
        """The run at one version, rebuilt from its events."""
        return codec.at_version(run_id, self.events(run_id), version)

    def meta(self, run_id: str) -> dict[str, str]:
        """The run's bookkeeping fields (fingerprint, fence, attempt, dups, ...)."""
        with self.keyspace.guarded():
            data = cast(dict[str, str], self.keyspace.client.hgetall(self.keyspace.keys(run_id).meta))
        if not data:
            raise RunNotFound(run_id)
        checked_format(run_id, data.get(FORMAT_FIELD))
        return data

    def lease(self, run_id: str) -> str | None:
        """The run's current lease value, if one is live."""
        with self.keyspace.guarded():
            return cast(str | None, self.keyspace.client.get(self.keyspace.keys(run_id).lease))

    def progress(self, run_id: str, lanes: Sequence[str] = ()) -> Progress:
        """What the watchdog needs beyond the snapshot (see :class:`Progress`), in one round
        trip. With ``lanes`` (the members of a parallel group due at the cursor), the lease is
        any of theirs that is live (the one with most time left) and the attempt count is
        theirs together."""
        k = self.keyspace.keys(run_id)
        owned = list(lanes) or [""]
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for lane in owned:
                pipe.get(k.lease_of(lane))
                pipe.pttl(k.lease_of(lane))
            fields = [f"attempt:{lane}" if lane else "attempt" for lane in owned]
            pipe.hmget(k.meta, [*fields, "fingerprint", "parked", "cancel", FORMAT_FIELD])
            replies = pipe.execute()
        meta = replies[-1]
        fingerprint, parked, cancel, stored = meta[-4:]
        checked_format(run_id, stored)
        live = [
            (max(int(left), 0), lease)
            for lease, left in zip(replies[0:-1:2], replies[1:-1:2], strict=True)
            if lease is not None
        ]
        left, lease = max(live) if live else (0, None)
        attempts = sum(int(n or 0) for n in meta[:-4])
        return Progress(lease, left, attempts, fingerprint or "", parked, cancel or "")

    def shape(self, run_id: str) -> Shape | None:
        """The shape of the definition a run started with (None for an unknown run)."""
        with self.keyspace.guarded():
            fingerprint = cast(str | None, self.keyspace.client.hget(self.keyspace.keys(run_id).meta, "fingerprint"))
        return self._shape(run_id, fingerprint) if fingerprint else None

    def _shape(self, run_id: str, fingerprint: str) -> Shape | None:
        """A recorded shape by fingerprint (read once per process: a fingerprint's shape never
        changes)."""
        if fingerprint not in self._shapes:
            with self.keyspace.guarded():
                raw = cast(str | None, self.keyspace.client.hget(self.keyspace.bucket_keys(run_id).shapes, fingerprint))
            if raw is None:
                return None
            self._shapes[fingerprint] = Shape.from_list(json.loads(raw))
        return self._shapes[fingerprint]

    def known_shape(self, fingerprint: str) -> Shape | None:
        """The shape of definition ``fingerprint`` if this process has read it already."""
        return self._shapes.get(fingerprint)

    def learn_shape(self, fingerprint: str, shape: Shape) -> Shape:
        """Remember the shape of ``fingerprint`` (read by another client of this store)."""
        return self._shapes.setdefault(fingerprint, shape)

    def logs(self, run_ids: Sequence[str]) -> list[list[Event]]:
        """The events of each run, in one round trip ([] for a run without);
        :class:`StorageFormatTooNew` for the first run of a newer storage format."""
        return [_checked(events) for events in self.read_logs(run_ids)]

    def read_logs(self, run_ids: Sequence[str]) -> list[list[Event] | StorageFormatTooNew]:
        """:meth:`logs`, but a run of a newer storage format is its refusal, in its place (its
        events are not decoded), so one such run does not hide the others (the archiver's batch)."""
        with self.keyspace.guarded():
            pipe = self.keyspace.client.pipeline(transaction=False)
            for run_id in run_ids:
                keys = self.keyspace.keys(run_id)
                pipe.hmget(keys.meta, ["fingerprint", FORMAT_FIELD])
                pipe.lrange(keys.events, 0, -1)
            replies = pipe.execute()
        metas = cast(list[list[str | None]], replies[::2])
        rows = cast(list[list[str]], replies[1::2])
        out: list[list[Event] | StorageFormatTooNew] = []
        for run_id, (fingerprint, stored), raw in zip(run_ids, metas, rows, strict=True):
            refused = _refusal(run_id, stored)
            if refused is not None:
                out.append(refused)
            else:
                shape = self._shape(run_id, fingerprint) if fingerprint else None
                out.append(codec.unpack(run_id, raw, shape) if raw else [])
        return out


def _refusal(run_id: str, stored: str | None) -> StorageFormatTooNew | None:
    """The refusal of a record whose format field holds ``stored``, or None if this saga reads it."""
    try:
        checked_format(run_id, stored)
    except StorageFormatTooNew as exc:
        return exc
    return None


def _checked(value: T | StorageFormatTooNew) -> T:
    """``value``, unless it is a refusal: then raised."""
    if isinstance(value, StorageFormatTooNew):
        raise value
    return value
