"""The store's schema: the name of every Redis key, and what its scripts reply. No I/O.

Runs are spread over ``B`` buckets (``SAGA_BUCKETS``, recorded in Redis): run ``R`` lives in
bucket ``k = crc32(R) % B``. Its keys and its bucket's indexes share the hash tag ``{k}``, so on
Redis Cluster they sit in one slot and each script — which touches one run and its bucket's
indexes — runs on one node, atomically; the buckets spread over the cluster's nodes.
:func:`run_keys`, :class:`BucketKeys` and :class:`GlobalKeys` build every key name; nothing else
does. ``P`` is the key prefix.

==============================  ======  ==========================================================
key                             type    holds
==============================  ======  ==========================================================
``P:{k}:r:R``                   hash    the run's bookkeeping, short fields only (so Redis keeps
                                        it a compact listpack): saga, sv (definition version),
                                        fingerprint, input (start payload hash, with a start
                                        key), t0 (start, µs), version, status, cursor, fence,
                                        attempt, dups, cancel, parked, unwind, the dedup marks
                                        ``d:forward:i`` / ``d:compensation:i`` (all but the last
                                        dropped when the run completes or is compensated),
                                        format (the storage format that wrote the record,
                                        :data:`saga.core.STORAGE_FORMAT`; none: format 1)
``P:{k}:s:R``                   string  the latest snapshot (JSON), while the run is unfinished
                                        or failed
``P:{k}:e:R``                   list    the run's events, oldest first (:mod:`saga.core.codec`)
``P:{k}:l:R``                   string  fencing token of the running attempt (or ``backoff:n``)
``P:{k}:active``                zset    unfinished run -> time by which it must show progress
``P:{k}:status:S``              zset    run -> time it entered status ``S`` (listing by status)
``P:{k}:parked``                zset    parked run -> time it was parked
``P:{k}:dlq``                   hash    dead-letter entry id -> entry
``P:{k}:dlq:index``             zset    dead-letter entry id -> time
``P:{k}:shapes``                hash    definition fingerprint -> its shape (step names, ...)
``P:{k}:done``                  channel the id of each run that became terminal (pub/sub; sharded
                                        on a cluster), for waiters
``P:config``                    hash    the layout: ``buckets``
``P:watchdog``                  string  id of the worker whose watchdog scans the buckets now
==============================  ======  ==========================================================
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from ..core import SagaState, Status


def bucket_of(run_id: str, buckets: int) -> int:
    """The bucket of run ``run_id`` among ``buckets``."""
    return zlib.crc32(run_id.encode("utf-8", "surrogatepass")) % buckets


class RunKeys(NamedTuple):
    """The Redis keys of one run."""

    meta: str
    events: str
    lease: str
    snapshot: str

    def lease_of(self, lane: str) -> str:
        """The lease key of ``lane`` (the run's own lease for '')."""
        return f"{self.lease}:{lane}" if lane else self.lease


def lane_id(direction: str, index: int) -> str:
    """The lane of a member of a parallel group in one direction: ``f3`` (forward, step 3) or
    ``c3`` (its compensation). Each lane has its own lease, fence and attempt count, so members
    run, retry and are fenced independently."""
    return f"{direction[0]}{index}"


def run_keys(prefix: str, bucket: int, run_id: str) -> RunKeys:
    """Every key of one run, tagged with its bucket."""
    base = f"{prefix}:{{{bucket}}}"
    return RunKeys(f"{base}:r:{run_id}", f"{base}:e:{run_id}", f"{base}:l:{run_id}", f"{base}:s:{run_id}")


@dataclass(frozen=True)
class BucketKeys:
    """The indexes of one bucket (same hash tag as its runs)."""

    bucket: int
    active: str
    parked: str
    dlq: str
    dlq_index: str
    shapes: str
    base: str
    #: the archive feed (a stream: one entry per committed transition, while an archive is on)
    feed: str
    #: feed entries the archiver could not copy, kept for an operator (a list)
    feed_parked: str
    #: the pub/sub channel told the id of each run of the bucket that becomes terminal (a
    #: sharded channel on a cluster: it hashes to the bucket's slot)
    done: str

    @classmethod
    def of(cls, prefix: str, bucket: int) -> BucketKeys:
        """The index keys of bucket ``bucket`` under ``prefix``."""
        b = f"{prefix}:{{{bucket}}}"
        return cls(
            bucket,
            f"{b}:active",
            f"{b}:parked",
            f"{b}:dlq",
            f"{b}:dlq:index",
            f"{b}:shapes",
            b,
            f"{b}:feed",
            f"{b}:feed:parked",
            f"{b}:done",
        )

    def status(self, status: Status | str) -> str:
        """The index of the bucket's runs in ``status``."""
        return f"{self.base}:status:{status}"


@dataclass(frozen=True)
class GlobalKeys:
    """The few keys not in a bucket: read or written outside the per-run scripts."""

    config: str
    watchdog: str
    archiver: str

    @classmethod
    def under(cls, prefix: str) -> GlobalKeys:
        """The global keys under ``prefix``."""
        return cls(f"{prefix}:config", f"{prefix}:watchdog", f"{prefix}:archiver")


class BeginOutcome(StrEnum):
    """What ``begin.lua`` decided for one delivery (its wire strings)."""

    RUN = "run"  # lease taken: run the body under the returned fencing token
    DONE = "done"  # this step already committed: skip
    BUSY = "busy"  # another attempt holds a live lease: skip
    STALE = "stale"  # the run's cursor is elsewhere, or the run is finished: skip
    DRIFT = "drift"  # the run was started under another definition
    MISSING = "missing"  # no such run
    EXPIRED = "expired"  # a forward step of a run past its deadline: nothing new starts
    FORMAT = "format"  # the run's record is of a newer storage format: nothing written


class CreateOutcome(StrEnum):
    """What ``create.lua`` did with a new run."""

    CREATED = "created"
    EXISTS = "exists"  # a run with this id and the same start payload: nothing written
    CONFLICT = "conflict"  # a run with this id and another start payload: nothing written


class ParkOutcome(StrEnum):
    """What ``park.lua`` did."""

    PARKED = "parked"
    ALREADY = "already"  # parked before: nothing written
    LEASED = "leased"  # an attempt holds the run: someone with its definition moves it
    MOVED = "moved"  # the run's version changed since it was read
    FINISHED = "finished"
    MISSING = "missing"


class CommitReason(StrEnum):
    """Why a commit was applied (``ok``, ``again``) or refused (the others): the wire strings of
    ``commit.lua`` and ``note.lua``."""

    OK = "ok"
    AGAIN = "again"  # this very commit was applied before (its reply was lost): not doubled
    VERSION = "version"  # the run moved past the version the decision started from
    FENCED = "fenced"  # the attempt's token no longer holds the run
    DONE = "done"  # the step's dedup mark is set by another commit
    MISSING = "missing"  # no such run
    LEASED = "leased"  # refused while an attempt holds a live lease


@dataclass(frozen=True)
class Message:
    """A task message a commit script pushes to the broker (when the broker is the store's own
    Redis): the list it goes to and the message as the broker's consumers read it."""

    key: str
    body: str


@dataclass(frozen=True)
class Begin:
    """What :meth:`RedisStore.begin` decided for one delivery of a step."""

    outcome: BeginOutcome
    state: SagaState | None
    token: str = ""
    attempt: int = 0
    #: DONE: no lease is live, so nothing runs the run now (the caller re-sends its cursor's step)
    idle: bool = False
    #: DRIFT: the fingerprint the run was started with
    stored_fingerprint: str = ""


@dataclass(frozen=True)
class CommitOptions:
    """How a transition is committed, beyond the version check every commit makes."""

    #: the committing attempt's fencing token ('' = the coordinator, not an attempt)
    token: str = ""
    #: the step's dedup mark to set, ``<direction>:<index>`` ('' = none)
    dedup_mark: str = ""
    #: release the attempt's lease
    release: bool = False
    #: a dead-letter entry to record with the transition
    dead_entry: dict[str, Any] | None = None
    #: refuse while an attempt holds a live lease (a retry's backoff hold does not count)
    refuse_while_leased: bool = False
    #: an operator unwinds the run: its compensations may run by name, under any definition
    operator_unwind: bool = False
    #: the committing attempt's lane in a parallel group ('' = none; see :func:`lane_id`)
    lane: str = ""
    #: lanes whose leases ``refuse_while_leased`` also checks and ``fence_all`` also ends
    watch: tuple[str, ...] = ()
    #: fence every attempt: nothing running now can commit (a deadline, a cancel of a hung step)
    fence_all: bool = False
    #: the saga has parallel groups: when the cursor moves, drop the lanes' bookkeeping
    grouped: bool = False


#: A commit by the coordinator itself (start, resume, cancel, an operator's action): no attempt's
#: token, no dedup mark, the lease left as it is.
PLAIN_COMMIT = CommitOptions()


@dataclass(frozen=True)
class CommitResult:
    """Whether a commit was applied, and why (not).

    ``cancel`` is set when an operator asked to cancel the run while the committing attempt ran.
    """

    applied: bool
    reason: CommitReason
    cancel: str = ""


@dataclass(frozen=True)
class Progress:
    """What the store knows of an unfinished run beyond its snapshot: its live lease, the attempt
    count at its cursor, the definition fingerprint it started with, and why it is parked."""

    lease: str | None
    lease_ms_left: int  # how long the live lease has left (0 without one)
    attempt: int
    fingerprint: str
    parked: str | None
    cancel: str = ""  # an operator's reason to cancel the run, while an attempt held it


@dataclass(frozen=True)
class ParkedRun:
    """A parked run as the parked index and its meta show it."""

    run_id: str
    saga: str
    definition_version: int
    fingerprint: str
    reason: str
