"""The store's schema: the name of every Redis key, and what its scripts reply. No I/O.

Key layout (``P`` is the key prefix, ``{R}`` the run id as a Redis Cluster hash tag, so each
run's keys share one slot and every script below touches one slot only). :class:`RunKeys` and
:class:`GlobalKeys` build every key name; nothing else does.

==========================  ======  ==========================================================
key                         type    holds
==========================  ======  ==========================================================
``P:{R}:meta``              hash    saga, sv (definition version), fingerprint, shape (JSON),
                                    input (start payload hash), version, status, cursor, fence,
                                    attempt, dups (suppressed duplicate deliveries), key, cancel,
                                    parked (why the run waits), unwind (``operator``), and the
                                    dedup marks ``d:forward:i`` / ``d:compensation:i`` ->
                                    ``version:token``
``P:{R}:history``           list    every snapshot, version ``n`` at index ``n-1``
``P:{R}:events``            list    every event, oldest first
``P:{R}:lease``             string  fencing token of the running attempt (or ``backoff:n``)
``P:{R}:dead``              list    this run's dead-letter entries
``P:runs``                  zset    run id -> start time (the listing index)
``P:active``                zset    unfinished run id -> time by which it must show progress
``P:parked``                zset    parked run id -> time it was parked
``P:watchdog``              string  id of the worker whose watchdog scans ``P:active`` now
``P:dlq``                   hash    dead-letter entry id -> entry
``P:dlq:index``             zset    dead-letter entry id -> time
==========================  ======  ==========================================================

"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from .state import SagaState


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
class GlobalKeys:
    """The keys shared by every run under one prefix."""

    runs: str
    active: str
    watchdog: str
    dlq: str
    dlq_index: str
    parked: str

    @classmethod
    def under(cls, prefix: str) -> GlobalKeys:
        """The global keys under ``prefix``."""
        p = prefix
        return cls(f"{p}:runs", f"{p}:active", f"{p}:watchdog", f"{p}:dlq", f"{p}:dlq:index", f"{p}:parked")


class BeginOutcome(StrEnum):
    """What ``begin.lua`` decided for one delivery (its wire strings)."""

    RUN = "run"  # lease taken: run the body under the returned fencing token
    DONE = "done"  # this step already committed: skip
    BUSY = "busy"  # another attempt holds a live lease: skip
    STALE = "stale"  # the run's cursor is elsewhere, or the run is finished: skip
    DRIFT = "drift"  # the run was started under another definition
    MISSING = "missing"  # no such run


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


@dataclass(frozen=True)
class ParkedRun:
    """A parked run as the parked index and its meta show it."""

    run_id: str
    saga: str
    definition_version: int
    fingerprint: str
    reason: str
