"""The Redis store: every Redis command this library sends is in this module.

Key layout (``P`` is the key prefix, ``{R}`` the run id as a Redis Cluster hash tag, so each
run's keys share one slot and every script below touches one slot only):

==========================  ======  ==========================================================
key                         type    holds
==========================  ======  ==========================================================
``P:{R}:meta``              hash    saga, fingerprint, version, status, cursor, fence, attempt,
                                    dups (suppressed duplicate deliveries), key, cancel, and the
                                    dedup marks ``d:forward:i`` / ``d:compensation:i`` ->
                                    ``version:token``
``P:{R}:history``           list    every snapshot, version ``n`` at index ``n-1``
``P:{R}:events``            list    every event, oldest first
``P:{R}:lease``             string  fencing token of the running attempt (or ``backoff:n``)
``P:{R}:dead``              list    this run's dead-letter entries
``P:runs``                  zset    run id -> start time (the listing index)
``P:active``                zset    unfinished run id -> time by which it must show progress
``P:watchdog``              string  id of the worker whose watchdog scans ``P:active`` now
``P:dlq``                   hash    dead-letter entry id -> entry
``P:dlq:index``             zset    dead-letter entry id -> time
==========================  ======  ==========================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from .errors import EntryNotFound, RunNotFound, StoreUnavailable
from .state import Event, JSONObject, SagaState, Transition


class RunKeys(NamedTuple):
    """The Redis keys of one run, in the order the scripts take them."""

    meta: str
    history: str
    events: str
    lease: str
    dead: str


def run_keys(prefix: str, run_id: str) -> RunKeys:
    """Every key of one run, under one hash tag."""
    base = f"{prefix}:{{{run_id}}}"
    return RunKeys(*(f"{base}:{part}" for part in RunKeys._fields))


@dataclass(frozen=True)
class Begin:
    """What :meth:`RedisStore.begin` decided for one delivery of a step."""

    outcome: str  # run | done | busy | stale | drift | missing
    state: SagaState | None
    token: str = ""
    attempt: int = 0
    extra: str = ""


@dataclass(frozen=True)
class CommitResult:
    """Whether a commit was applied; ``reason`` says why not (version, fenced, done, missing).

    ``cancel`` is set when an operator asked to cancel the run while the committing attempt ran.
    """

    applied: bool
    reason: str
    cancel: str = ""


def redact(url: str) -> str:
    """A URL with its password hidden, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _script(name: str) -> str:
    return resources.files("saga").joinpath("lua", f"{name}.lua").read_text()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class RedisStore:
    """Runs, their versions, events, leases and dead letters in one Redis.

    Guarantees: each transition is committed by one script call (one round trip), so a reader
    sees a run either before or after it, never half-way; a commit that lost a race is refused.
    Connection errors are retried with backoff (``retries``), then raised as
    :class:`StoreUnavailable` with a one-line message.
    """

    def __init__(self, url: str, *, prefix: str = "saga", retention_seconds: int = 7 * 24 * 3600,
                 lease_seconds: float = 5.0, dispatch_timeout: float = 30.0, retries: int = 8) -> None:
        self.url = url
        self.prefix = prefix
        self.retention_ms = retention_seconds * 1000
        self.lease_seconds = lease_seconds
        self.dispatch_timeout = dispatch_timeout
        self.active_key = f"{prefix}:active"
        try:
            self.client: redis.Redis = redis.Redis.from_url(
                url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError], health_check_interval=30,
            )
        except ValueError as exc:
            raise StoreUnavailable(f"SAGA_REDIS_URL {redact(url)!r} is not a Redis URL: {exc}") from None
        self._create = self.client.register_script(_script("create"))
        self._begin = self.client.register_script(_script("begin"))
        self._commit = self.client.register_script(_script("commit"))
        self._record = self.client.register_script(_script("record"))
        self._renew = self.client.register_script(_script("renew"))
        self._note = self.client.register_script(_script("note"))

    def keys(self, run_id: str) -> RunKeys:
        """The keys of one run."""
        return run_keys(self.prefix, run_id)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(
                f"cannot reach Redis at {redact(self.url)} ({exc}); start it or set SAGA_REDIS_URL"
            ) from None

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless Redis answers."""
        with self._guard():
            self.client.ping()

    # --- writing ---------------------------------------------------------------------------

    def create(self, saga: str, fingerprint: str, start: Transition, key: str | None) -> bool:
        """Write a new run from its start transition; False if the run id already exists."""
        state = start.state
        k = self.keys(state.id)
        keys = [k.meta, k.history, k.events]
        args = [saga, fingerprint, _dumps(state.to_dict()), _dumps(start.events[0]), key or "",
                state.status.value, state.current_step]
        now = time.time()

        def index(pipe: redis.client.Pipeline) -> None:  # NX: an existing run's entries stay as they were
            pipe.zadd(f"{self.prefix}:runs", {state.id: now}, nx=True)
            pipe.zadd(self.active_key, {state.id: now + self.dispatch_timeout}, nx=True)

        with self._guard():
            return bool(self._eval_pipelined(self._create, keys, args, index))

    def _eval_pipelined(self, script: Script, keys: Sequence[str], args: Sequence[Any],
                        more: Callable[[redis.client.Pipeline], None]) -> Any:
        """Run ``script`` and the commands ``more`` adds in one round trip; return the script's reply.

        EVALSHA is sent as is (redis-py's pipelined scripts would send SCRIPT EXISTS first, a
        round trip more); a Redis that forgot the script (NOSCRIPT, e.g. after a restart) gets it
        loaded, and the whole pipeline is sent again.
        """
        for loaded in (False, True):
            pipe = self.client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            more(pipe)
            try:
                return pipe.execute()[0]
            except redis.exceptions.NoScriptError:
                if loaded:
                    raise
                self.client.script_load(script.script)

    def begin(self, run_id: str, direction: str, index: int, attempt: int, lease_ms: int,
              fingerprint: str, started: Event) -> Begin:
        """Decide whether a delivery may run its body, taking the lease if so (see begin.lua).

        ``started`` is the started event without ``attempt`` and ``version``, which the script adds.
        """
        prefix = _dumps(started)[:-1]
        k = self.keys(run_id)
        with self._guard():
            out = self._begin(keys=[k.meta, k.history, k.events, k.lease],
                              args=[direction, index, lease_ms, attempt, fingerprint, prefix])
        outcome, snap, token, n, extra = out
        state = SagaState.from_dict(json.loads(snap)) if snap else None
        return Begin(outcome, state, token, int(n), extra)

    def commit(self, before: SagaState, transition: Transition, *, token: str = "",
               done_field: str = "", release: bool = False, dead_entry: JSONObject | None = None,
               idle: bool = False) -> CommitResult:
        """Commit one transition (see commit.lua); dead letters also reach the global queue.

        With ``idle``, the commit is refused (reason ``leased``) while an attempt holds a live lease.
        """
        after = transition.state
        moved = (after.current_step, after.status) != (before.current_step, before.status)
        flags = ("r" if release else "") + ("a" if moved else "") + ("i" if idle else "")
        ttl = self.retention_ms if after.status.value in ("completed", "compensated") else 0
        k = self.keys(after.id)
        args = [before.version, token, after.version, _dumps(after.to_dict()), after.status.value,
                after.current_step, f"d:{done_field}" if done_field else "", flags, ttl,
                _dumps(dead_entry) if dead_entry else "", *(_dumps(e) for e in transition.events)]
        def index(pipe: redis.client.Pipeline) -> None:
            if after.status.terminal:
                pipe.zrem(self.active_key, after.id)
            else:  # the watchdog looks once the next step's lease could have lapsed
                pipe.zadd(self.active_key, {after.id: time.time() + self.lease_seconds + 1})

        with self._guard():
            reply = self._eval_pipelined(self._commit, list(k), args, index)
            applied = bool(reply[0])
            if applied and dead_entry is not None:
                self._index_dead_letter(dead_entry)
        return CommitResult(applied, str(reply[1]), str(reply[2]) if applied else "")

    def _index_dead_letter(self, entry: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(f"{self.prefix}:dlq", entry["id"], _dumps(entry))
        pipe.zadd(f"{self.prefix}:dlq:index", {entry["id"]: time.time()})
        pipe.execute()

    def record(self, run_id: str, token: str, events: Sequence[Event], lease_value: str,
               lease_ms: int) -> bool:
        """Append snapshot-neutral events for a fenced attempt and set the lease (see record.lua)."""
        k = self.keys(run_id)
        with self._guard():
            ok = self._record(keys=[k.meta, k.events, k.lease],
                              args=[token, lease_value, lease_ms, *(_dumps(e) for e in events)])
        return bool(ok)

    def note(self, run_id: str, events: Sequence[Event], *, expected_version: int | None = None,
             require_idle: bool = False, fence: bool = False) -> tuple[bool, str]:
        """Append snapshot-neutral events for the coordinator (see note.lua).

        Returns ``(True, new token or '')`` or ``(False, reason)``.
        """
        k = self.keys(run_id)
        with self._guard():
            ok, detail = self._note(
                keys=[k.meta, k.events, k.lease],
                args=["" if expected_version is None else expected_version, "1" if require_idle else "0",
                      "1" if fence else "0", *(_dumps(e) for e in events)],
            )
        return bool(ok), str(detail)

    def request_cancel(self, run_id: str, reason: str) -> None:
        """Ask the attempt running now to cancel the run when it commits."""
        with self._guard():
            self.client.hset(self.keys(run_id).meta, "cancel", reason or "cancelled")

    def schedule(self, run_id: str, delay: float) -> None:
        """Have the watchdog look at an unfinished run again after ``delay`` seconds."""
        with self._guard():
            self.client.zadd(self.active_key, {run_id: time.time() + delay})

    def forget_active(self, run_id: str) -> None:
        """Stop watching a run (it is terminal)."""
        with self._guard():
            self.client.zrem(self.active_key, run_id)

    def due(self, limit: int = 100) -> list[str]:
        """Unfinished runs whose progress deadline has passed, oldest deadline first."""
        with self._guard():
            ids = cast(list[str], self.client.zrangebyscore(self.active_key, "-inf", time.time(), 0, limit))
        return ids

    def hold_lock(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take or extend a named lock held by ``owner``; False if another owner holds it."""
        key = f"{self.prefix}:{name}"
        with self._guard():
            if self.client.set(key, owner, nx=True, px=ttl_ms):
                return True
            if self.client.get(key) == owner:
                self.client.pexpire(key, ttl_ms)
                return True
        return False

    def dead_letter(self, entry_id: str) -> JSONObject:
        """One dead-letter entry; :class:`EntryNotFound` if it is not in the queue."""
        with self._guard():
            raw = self.client.hget(f"{self.prefix}:dlq", entry_id)
        if raw is None:
            raise EntryNotFound(entry_id)
        entry: JSONObject = json.loads(raw)
        return entry

    def remove_dead_letter(self, entry_id: str) -> None:
        """Take an entry off the queue (the run's own record of it stays)."""
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(f"{self.prefix}:dlq", entry_id)
            pipe.zrem(f"{self.prefix}:dlq:index", entry_id)
            pipe.execute()

    def dead_letter_depth(self) -> int:
        """How many entries wait in the dead-letter queue."""
        with self._guard():
            return int(self.client.zcard(f"{self.prefix}:dlq:index"))

    def renew(self, run_id: str, token: str, lease_ms: int) -> bool:
        """Extend a lease that still carries ``token``."""
        with self._guard():
            return bool(self._renew(keys=[self.keys(run_id).lease], args=[token, lease_ms]))

    # --- reading ---------------------------------------------------------------------------

    def get(self, run_id: str) -> SagaState:
        """The latest snapshot of a run."""
        with self._guard():
            snap = self.client.lindex(self.keys(run_id).history, -1)
        if snap is None:
            raise RunNotFound(run_id)
        return SagaState.from_dict(json.loads(snap))

    def at_version(self, run_id: str, version: int) -> SagaState:
        """The snapshot of a run at one version."""
        with self._guard():
            snap = self.client.lindex(self.keys(run_id).history, version - 1) if version >= 1 else None
            exists = snap is not None or self.client.exists(self.keys(run_id).meta)
        if snap is None:
            if exists:
                raise RunNotFound(f"{run_id}@v{version}")
            raise RunNotFound(run_id)
        return SagaState.from_dict(json.loads(snap))

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

    def dead_letters(self) -> list[JSONObject]:
        """Every dead-letter entry, oldest first."""
        with self._guard():
            ids = cast(list[str], self.client.zrange(f"{self.prefix}:dlq:index", 0, -1))
            raw = self.client.hmget(f"{self.prefix}:dlq", ids) if ids else []
        return [json.loads(r) for r in raw if r is not None]

    def snapshots(self, run_ids: Sequence[str]) -> list[SagaState | None]:
        """The latest snapshot of each run (None where it has expired), in one round trip."""
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            for run_id in run_ids:
                pipe.lindex(self.keys(run_id).history, -1)
            raw = pipe.execute()
        return [None if r is None else SagaState.from_dict(json.loads(r)) for r in raw]

    def run_ids(self, limit: int | None = None) -> list[str]:
        """Run ids, newest first."""
        with self._guard():
            ids = cast(list[str], self.client.zrevrange(f"{self.prefix}:runs", 0, -1 if limit is None else limit - 1))
        return ids
