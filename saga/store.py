"""The Redis store: every Redis command this library sends is in this module.

The key layout and the scripts' replies are in :mod:`saga.schema`; the scripts themselves in
``saga/lua/``, each headed with its KEYS, ARGV and reply. Every script touches the keys of one
run only (one hash tag), so each runs on one Redis Cluster slot. The store decides nothing:
retention and watchdog deadlines arrive as arguments (:mod:`saga.policy` computes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from .connection import Client, Pipeline, connect, eval_pipelined, guard, load_script
from .errors import RunNotFound
from .indexes import IndexOperations
from .schema import (
    PLAIN_COMMIT,
    Begin,
    BeginOutcome,
    CommitOptions,
    CommitReason,
    CommitResult,
    CreateOutcome,
    GlobalKeys,
    ParkOutcome,
    Progress,
    RunKeys,
    run_keys,
)
from .state import Direction, Event, SagaState, Shape, Transition, payload_hash


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _state(snapshot: str | None) -> SagaState | None:
    return SagaState.from_dict(json.loads(snapshot)) if snapshot else None


class RedisStore(IndexOperations):
    """Runs, their versions, events, leases and dead letters in one Redis.

    The cross-run operations (watchdog list, lock, parked runs, dead letters, listing) come from
    :class:`~saga.indexes.IndexOperations`.

    Guarantees: each transition is committed by one script call (one round trip), so a reader
    sees a run either before or after it, never half-way; a commit that lost a race is refused.
    Connection errors are retried with backoff (``retries``), then raised as
    :class:`StoreUnavailable` with a one-line message.
    """

    def __init__(self, url: str, *, prefix: str = "saga", retries: int = 8) -> None:
        self.url = url
        self.prefix = prefix
        self.global_keys = GlobalKeys.under(prefix)
        self.client: Client = connect(url, retries)
        self._create = load_script(self.client, "create")
        self._begin = load_script(self.client, "begin")
        self._commit = load_script(self.client, "commit")
        self._record = load_script(self.client, "record")
        self._renew = load_script(self.client, "renew")
        self._note = load_script(self.client, "note")
        self._park = load_script(self.client, "park")

    def keys(self, run_id: str) -> RunKeys:
        """The keys of one run."""
        return run_keys(self.prefix, run_id)

    def _guard(self) -> AbstractContextManager[None]:
        return guard(self.url)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with self._guard():
            self.client.ping()

    # --- writing ---------------------------------------------------------------------------

    def create(self, shape: Shape, start: Transition, key: str | None, *, check_at: float) -> CreateOutcome:
        """Write a new run from its start transition, recording the definition's shape and a hash
        of the start payload; listed now and due for the watchdog at ``check_at``. A run with
        this id already there is left as it is (so are its index entries): ``EXISTS`` when it
        was started with the same payload, ``CONFLICT`` when with another."""
        state = start.state
        k = self.keys(state.id)
        g = self.global_keys
        keys = [k.meta, k.history, k.events]
        args = [
            state.saga,
            shape.fingerprint,
            _dumps(state.to_dict()),
            _dumps(start.events[0]),
            key or "",
            state.status.value,
            state.current_step,
            state.definition_version,
            _dumps(shape.to_list()),
            payload_hash(state.payload),
        ]

        def index(pipe: Pipeline) -> None:
            pipe.zadd(g.runs, {state.id: time.time()}, nx=True)
            pipe.zadd(g.active, {state.id: check_at}, nx=True)

        with self._guard():
            return CreateOutcome(eval_pipelined(self.client, self._create, keys, args, index))

    def begin(
        self,
        run_id: str,
        direction: Direction,
        index: int,
        *,
        attempt: int,
        lease_ms: int,
        fingerprint: str,
        started: Event,
        check_at: float,
    ) -> Begin:
        """Decide whether a delivery may run its body, taking the lease if so (see begin.lua).

        ``started`` is the started event without ``attempt`` and ``version``, which the script
        adds. In the same round trip an unfinished run's watchdog deadline becomes ``check_at``,
        so the watchdog follows every lease, the first step's too. ``fingerprint`` '' runs a
        compensation by name for an operator's unwind.
        """
        prefix = _dumps(started)[:-1]
        k = self.keys(run_id)
        active = self.global_keys.active
        keys = [k.meta, k.history, k.events, k.lease]
        args = [direction.value, index, lease_ms, attempt, fingerprint, prefix]

        def deadline(pipe: Pipeline) -> None:  # XX: a finished (or unknown) run stays off the list
            pipe.zadd(active, {run_id: check_at}, xx=True)

        with self._guard():
            outcome, snapshot, token, n, extra = eval_pipelined(self.client, self._begin, keys, args, deadline)
        kind = BeginOutcome(outcome)
        return Begin(
            kind,
            _state(snapshot),
            token,
            int(n),
            idle=kind is BeginOutcome.DONE and extra == "1",
            stored_fingerprint=extra if kind is BeginOutcome.DRIFT else "",
        )

    def commit(
        self,
        before: SagaState,
        transition: Transition,
        options: CommitOptions = PLAIN_COMMIT,
        *,
        check_at: float | None,
        ttl_ms: int = 0,
    ) -> CommitResult:
        """Commit one transition (see commit.lua): the snapshot, its events, and as ``options``
        say the step's dedup mark, the lease released, a dead-letter entry — or nothing, if the
        version moved or the token no longer holds the run. In the same round trip the run's
        watchdog deadline becomes ``check_at`` (None: off the list, it is finished); its keys
        expire after ``ttl_ms`` (0: kept). An applied dead letter also reaches the global queue.
        """
        after = transition.state
        moved = (after.current_step, after.status) != (before.current_step, before.status)
        o = options
        flags = "".join(
            flag
            for flag, on in (("r", o.release), ("a", moved), ("i", o.refuse_while_leased), ("u", o.operator_unwind))
            if on
        )
        k = self.keys(after.id)
        active = self.global_keys.active
        args = [
            before.version,
            o.token,
            after.version,
            _dumps(after.to_dict()),
            after.status.value,
            after.current_step,
            f"d:{o.dedup_mark}" if o.dedup_mark else "",
            flags,
            ttl_ms,
            _dumps(o.dead_entry) if o.dead_entry else "",
            *(_dumps(e) for e in transition.events),
        ]

        def index(pipe: Pipeline) -> None:
            if check_at is None:
                pipe.zrem(active, after.id)
            else:
                pipe.zadd(active, {after.id: check_at})

        with self._guard():
            reply = eval_pipelined(self.client, self._commit, list(k), args, index)
            applied = bool(reply[0])
            if applied and o.dead_entry is not None:
                self._index_dead_letter(o.dead_entry)
        return CommitResult(applied, CommitReason(reply[1]), str(reply[2]) if applied else "")

    def record_retry(self, run_id: str, token: str, events: Sequence[Event], lease_value: str, lease_ms: int) -> bool:
        """Append a fenced attempt's retry events (snapshot-neutral) and hand its lease to the
        retry that follows (see record.lua); False when the token no longer holds the run."""
        k = self.keys(run_id)
        with self._guard():
            ok = self._record(
                keys=[k.meta, k.events, k.lease], args=[token, lease_value, lease_ms, *(_dumps(e) for e in events)]
            )
        return bool(ok)

    def note_events(
        self,
        run_id: str,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        require_idle: bool = False,
        fence: bool = False,
        unpark: bool = False,
    ) -> tuple[bool, str]:
        """Append snapshot-neutral events for the coordinator: a resume, an operator's note
        (see note.lua). With ``fence``, take a new fencing token, so a zombie attempt of the
        old one can no longer commit; with ``unpark``, the run leaves the parked runs.

        Returns ``(True, new token or '')`` or ``(False, reason)``.
        """
        k = self.keys(run_id)
        with self._guard():
            ok, detail = self._note(
                keys=[k.meta, k.events, k.lease],
                args=[
                    "" if expected_version is None else expected_version,
                    "1" if require_idle else "0",
                    "1" if fence else "0",
                    "1" if unpark else "0",
                    *(_dumps(e) for e in events),
                ],
            )
            if ok and unpark:
                self.client.zrem(self.global_keys.parked, run_id)
        return bool(ok), str(detail)

    def park(self, state: SagaState, event: Event, reason: str) -> ParkOutcome:
        """Park a run no worker here can move (see park.lua): its ``saga.parked`` event and reason
        are recorded, and it joins the parked runs, unless an attempt holds it or it moved."""
        k = self.keys(state.id)
        with self._guard():
            outcome = ParkOutcome(
                self._park(keys=[k.meta, k.events, k.lease], args=[reason, state.version, _dumps(event)])
            )
            if outcome is ParkOutcome.PARKED:
                self.client.zadd(self.global_keys.parked, {state.id: time.time()})
        return outcome

    def request_cancel(self, run_id: str, reason: str) -> None:
        """Ask the attempt running now to cancel the run when it commits."""
        with self._guard():
            self.client.hset(self.keys(run_id).meta, "cancel", reason or "cancelled")

    def renew(self, run_id: str, token: str, lease_ms: int) -> bool:
        """Extend a lease that still carries ``token``."""
        with self._guard():
            return bool(self._renew(keys=[self.keys(run_id).lease], args=[token, lease_ms]))

    # --- reading ---------------------------------------------------------------------------

    def get(self, run_id: str) -> SagaState:
        """The latest snapshot of a run."""
        with self._guard():
            state = _state(cast(str | None, self.client.lindex(self.keys(run_id).history, -1)))
        if state is None:
            raise RunNotFound(run_id)
        return state

    def at_version(self, run_id: str, version: int) -> SagaState:
        """The snapshot of a run at one version."""
        with self._guard():
            snap = (
                cast(str | None, self.client.lindex(self.keys(run_id).history, version - 1)) if version >= 1 else None
            )
            exists = snap is not None or self.client.exists(self.keys(run_id).meta)
        state = _state(snap)
        if state is None:
            raise RunNotFound(f"{run_id}@v{version}" if exists else run_id)
        return state

    def history(self, run_id: str) -> list[SagaState]:
        """Every snapshot of a run, oldest first."""
        with self._guard():
            snaps = self.client.lrange(self.keys(run_id).history, 0, -1)
        if not snaps:
            raise RunNotFound(run_id)
        return [SagaState.from_dict(json.loads(s)) for s in snaps]

    def events(self, run_id: str) -> list[Event]:
        """Every event of a run, oldest first."""
        with self._guard():
            raw = self.client.lrange(self.keys(run_id).events, 0, -1)
        if not raw:
            raise RunNotFound(run_id)
        return [json.loads(e) for e in raw]

    def meta(self, run_id: str) -> dict[str, str]:
        """The run's bookkeeping fields (fingerprint, fence, attempt, dups, ...)."""
        with self._guard():
            data = cast(dict[str, str], self.client.hgetall(self.keys(run_id).meta))
        if not data:
            raise RunNotFound(run_id)
        return data

    def lease(self, run_id: str) -> str | None:
        """The run's current lease value, if one is live."""
        with self._guard():
            value = cast(str | None, self.client.get(self.keys(run_id).lease))
        return value

    def progress(self, run_id: str) -> Progress:
        """What the watchdog needs beyond the snapshot (see :class:`Progress`), in one round trip."""
        k = self.keys(run_id)
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.get(k.lease)
            pipe.pttl(k.lease)
            pipe.hmget(k.meta, ["attempt", "fingerprint", "parked"])
            lease, left, (attempt, fingerprint, parked) = pipe.execute()
        return Progress(
            lease, max(int(left), 0) if lease is not None else 0, int(attempt or 0), fingerprint or "", parked
        )

    def shape(self, run_id: str) -> Shape | None:
        """The shape of the definition a run started with (None for a run from before shapes
        were recorded)."""
        with self._guard():
            raw = cast(str | None, self.client.hget(self.keys(run_id).meta, "shape"))
        return Shape.from_list(json.loads(raw)) if raw else None

    def snapshots(self, run_ids: Sequence[str]) -> list[SagaState | None]:
        """The latest snapshot of each run (None where it has expired), in one round trip."""
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.lindex(self.keys(run_id).history, -1)
            raw = pipe.execute()
        return [_state(r) for r in raw]
